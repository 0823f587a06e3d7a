"""The two-people rule: whoever proposed a version cannot approve it, by any door; the audit
record names both people; team admins switch the rule, and the global catalog has it on."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import Client

from catalog import services
from catalog.models import ApprovalAction, ApprovalRecord, ExtensionVersion, Membership, Role, VersionStatus
from tests.catalog.conftest import DEMO_RECIPE, Cast, write_recipe
from tests.catalog.test_team_isolation import catalog

__all__ = ["catalog"]

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/catalog/extensionversion/"


def second_curator(cast: Cast) -> User:
    user = User.objects.create_user("second")
    Membership.objects.create(team=cast.team, user=user, role=Role.CURATOR)
    return user


def team_admin(cast: Cast) -> User:
    user = User.objects.create_user("boss")
    Membership.objects.create(team=cast.team, user=user, role=Role.ADMIN)
    return user


def rule_on(cast: Cast) -> None:
    cast.team.two_person_approval = True
    cast.team.save()


def web_client(user: User, *, admin_site: bool = False) -> Client:
    if admin_site:
        user.is_staff = True
        user.save()
        user.user_permissions.add(
            *Permission.objects.filter(
                content_type__app_label="catalog",
                codename__in=["view_extensionversion", "change_extensionversion", "add_extensionversion"],
            )
        )
    client = Client()
    client.force_login(user)
    return client


def approval_record(version: ExtensionVersion) -> ApprovalRecord:
    return ApprovalRecord.objects.get(version=version, action=ApprovalAction.APPROVED)


@pytest.mark.reliability
def test_the_proposer_cannot_approve_through_the_api_the_page_or_the_admin(
    cast: Cast, catalog: ExtensionVersion
) -> None:
    rule_on(cast)
    assert catalog.proposed_by == cast.curator  # the owner filed the team's recipe

    api = cast.client(cast.curator).post(
        f"/api/versions/{catalog.pk}/approve", {"reason": "mine"}, format="json"
    )
    assert api.status_code == 403
    assert api.json()["code"] == "approval.same-person"
    assert "another curator must approve it" in api.json()["message"]

    page_client = web_client(cast.curator)
    review = page_client.get(f"/versions/{catalog.pk}/review/")
    assert "another curator must approve it" in review.content.decode()
    page = page_client.post(f"/versions/{catalog.pk}/review/", {"decision": "approve", "reason": "mine"})
    assert page.status_code == 403
    assert "another curator must approve it" in page.content.decode()

    admin = web_client(cast.curator, admin_site=True).post(
        CHANGELIST,
        {"action": "approve_versions", "_selected_action": [catalog.pk], "reason": "x"},
        follow=True,
    )
    messages = " ".join(str(m) for m in admin.context["messages"])
    assert "another curator must approve it" in messages and "approved" not in messages.split(":")[0]

    catalog.refresh_from_db()
    assert catalog.status == VersionStatus.PROPOSED
    assert not ApprovalRecord.objects.filter(version=catalog, action=ApprovalAction.APPROVED).exists()


@pytest.mark.reliability
def test_the_admin_site_cannot_add_versions_or_rewrite_a_proposal(
    cast: Cast, catalog: ExtensionVersion
) -> None:
    """Adding a version there would file it without a proposer; editing one would let the approver
    change someone else's proposal before approving it."""
    client = web_client(cast.staff, admin_site=True)
    assert client.get(f"{CHANGELIST}add/").status_code == 403
    change = client.post(
        f"{CHANGELIST}{catalog.pk}/change/",
        {
            "version": "v6.6.6",
            "vars": '{"x": "y"}',
            "reason": "",
            "deprecated": "",
            "extension": catalog.extension_id,
        },
    )
    assert change.status_code in (200, 302, 403)
    catalog.refresh_from_db()
    assert catalog.version == "v1.0.1" and catalog.vars == {}


@pytest.mark.reliability
def test_a_rejected_version_cannot_be_proposed_again_to_change_hands(
    cast: Cast, catalog: ExtensionVersion
) -> None:
    rule_on(cast)
    other = second_curator(cast)
    services.version_reject(version=catalog, actor=other, reason="not yet")
    again = cast.client(other).post("/api/extensions/secret/versions/", {"version": "v1.0.1"}, format="json")
    assert again.status_code == 409
    catalog.refresh_from_db()
    assert catalog.status == VersionStatus.REJECTED and catalog.proposed_by == cast.curator


def test_another_curator_approves_and_the_audit_names_both(cast: Cast, catalog: ExtensionVersion) -> None:
    rule_on(cast)
    other = second_curator(cast)

    response = cast.client(other).post(
        f"/api/versions/{catalog.pk}/approve", {"reason": "read it"}, format="json"
    )

    assert response.status_code == 200, response.content
    assert response.json()["status"] == VersionStatus.PINNING
    record = approval_record(catalog)
    assert record.actor == other and record.proposer == cast.curator
    shown = [a for a in response.json()["approvals"] if a["action"] == "approved"]
    assert shown == [
        {
            "action": "approved",
            "actor": "second",
            "proposer": "cora",
            "at": shown[0]["at"],
            "reason": "read it",
        }
    ]


def test_without_the_rule_a_curator_still_approves_their_own_proposal(
    cast: Cast, catalog: ExtensionVersion
) -> None:
    assert cast.team.two_person_approval is False  # teams start without the rule
    response = cast.client(cast.curator).post(f"/api/versions/{catalog.pk}/approve", {}, format="json")
    assert response.status_code == 200, response.content
    record = approval_record(catalog)
    assert record.actor == cast.curator and record.proposer == cast.curator
    # Roles are unchanged: a builder cannot approve, whatever the rule.
    rule_on(cast)
    other = ExtensionVersion.objects.get(extension__name="secret", version="v1.0.0")
    refused = cast.client(cast.teammate).post(f"/api/versions/{other.pk}/approve", {}, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"


def test_team_admins_switch_the_rule_by_api_and_page(cast: Cast, catalog: ExtensionVersion) -> None:
    boss = team_admin(cast)
    assert cast.client(cast.curator).get("/api/teams/blue/").json() == {
        "slug": "blue",
        "name": "Blue",
        "two_person_approval": False,
        "private_artifacts": False,
    }
    curator = cast.client(cast.curator).patch(
        "/api/teams/blue/", {"two_person_approval": True}, format="json"
    )
    assert curator.status_code == 403 and curator.json()["code"] == "forbidden"
    assert (
        cast.client(cast.outsider)
        .patch("/api/teams/blue/", {"two_person_approval": True}, format="json")
        .status_code
        == 404
    )
    cast.team.refresh_from_db()
    assert cast.team.two_person_approval is False

    switched = cast.client(boss).patch("/api/teams/blue/", {"two_person_approval": True}, format="json")
    assert switched.status_code == 200 and switched.json()["two_person_approval"] is True
    refused = cast.client(cast.curator).post(f"/api/versions/{catalog.pk}/approve", {}, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "approval.same-person"

    assert web_client(cast.curator).post("/teams/blue/", {"team_settings": "1"}).status_code == 403
    page = web_client(boss).post("/teams/blue/", {"team_settings": "1"}, follow=True)  # box unticked: off
    assert page.status_code == 200 and "Two people approve: off" in page.content.decode()
    cast.team.refresh_from_db()
    assert cast.team.two_person_approval is False
    assert (
        cast.client(cast.curator).post(f"/api/versions/{catalog.pk}/approve", {}, format="json").status_code
        == 200
    )


@pytest.fixture
def builtin(cast: Cast, tmp_path: Path) -> ExtensionVersion:
    write_recipe(tmp_path, "demo", DEMO_RECIPE)
    call_command("sync_catalog", "--recipes-dir", str(tmp_path), verbosity=0)
    Membership.objects.create(team=cast.team, user=cast.staff, role=Role.BUILDER)
    return ExtensionVersion.objects.get(extension__name="demo", version="v1.0.0")


@pytest.mark.reliability
def test_one_staff_member_cannot_propose_and_approve_a_global_version(
    cast: Cast, builtin: ExtensionVersion
) -> None:
    proposed = cast.client(cast.staff).post(
        "/api/extensions/demo/versions/", {"version": "v2.0.0"}, format="json"
    )
    assert proposed.status_code == 201, proposed.content
    version_id = proposed.json()["id"]

    refused = cast.client(cast.staff).post(f"/api/versions/{version_id}/approve", {}, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "approval.same-person"
    assert "the global catalog requires two people" in refused.json()["message"]

    colleague = User.objects.create_user("staff2", is_staff=True)
    approved = cast.client(colleague).post(f"/api/versions/{version_id}/approve", {}, format="json")
    assert approved.status_code == 200
    record = approval_record(ExtensionVersion.objects.get(pk=version_id))
    assert record.actor == colleague and record.proposer == cast.staff


def test_versions_filed_by_the_system_need_one_curator_and_say_so(
    cast: Cast, builtin: ExtensionVersion
) -> None:
    discovered = services.version_propose(
        extension=builtin.extension, version="v3.0.0", actor=None, via="discovery", reason="GitHub release"
    )
    for version, label in ((builtin, "built-in recipe"), (discovered, "upstream discovery")):
        response = cast.client(cast.staff).post(f"/api/versions/{version.pk}/approve", {}, format="json")
        assert response.status_code == 200, response.content
        record = approval_record(version)
        assert record.actor == cast.staff and record.proposer is None and record.proposer_label == label


def test_the_global_rule_can_be_switched_off_by_the_operator(
    cast: Cast, builtin: ExtensionVersion, settings
) -> None:
    settings.GLOBAL_CATALOG_TWO_PERSON_APPROVAL = False
    proposed = cast.client(cast.staff).post(
        "/api/extensions/demo/versions/", {"version": "v2.0.0"}, format="json"
    )
    approved = cast.client(cast.staff).post(
        f"/api/versions/{proposed.json()['id']}/approve", {}, format="json"
    )
    assert approved.status_code == 200
