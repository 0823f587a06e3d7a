"""The Django admin runs the approval flow: role checks, an audit record, refusals as messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.test import Client

from catalog.models import ApprovalAction, ApprovalRecord, ExtensionVersion, VersionStatus
from tests.catalog.conftest import DEMO_RECIPE, Cast, write_recipe
from tests.catalog.test_team_isolation import catalog

__all__ = ["catalog"]

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/catalog/extensionversion/"


def admin_client(cast: Cast) -> Client:
    """The global catalog's curator (staff) with the admin rights to act on versions."""
    cast.staff.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="catalog",
            codename__in=["view_extensionversion", "change_extensionversion"],
        )
    )
    client = Client()
    client.force_login(cast.staff)
    return client


def act(client: Client, action: str, version: ExtensionVersion, reason: str = "") -> str:
    response = client.post(
        CHANGELIST, {"action": action, "_selected_action": [version.pk], "reason": reason}, follow=True
    )
    assert response.status_code == 200
    return " ".join(str(m) for m in response.context["messages"])


def test_staff_approves_a_builtin_version_with_an_audit_record(cast: Cast, tmp_path: Path) -> None:
    write_recipe(tmp_path, "demo", DEMO_RECIPE)
    call_command("sync_catalog", "--recipes-dir", str(tmp_path), verbosity=0)
    version = ExtensionVersion.objects.get(extension__name="demo", version="v1.0.0")
    assert version.status == VersionStatus.PROPOSED

    message = act(admin_client(cast), "approve_versions", version, reason="Checked the release notes")

    assert "1 version(s) approved" in message
    version.refresh_from_db()
    assert version.status == VersionStatus.PINNING and version.decided_by == cast.staff
    record = ApprovalRecord.objects.get(version=version, action=ApprovalAction.APPROVED)
    assert record.actor == cast.staff and record.reason == "Checked the release notes"


def test_rejecting_needs_a_reason_and_the_owning_teams_curator(cast: Cast, catalog: ExtensionVersion) -> None:
    client = admin_client(cast)
    # Staff curate the global catalog only; team blue's private version is blue's curators' call.
    refused = act(client, "reject_versions", catalog, reason="Not ours to keep")
    assert "curator role in team blue" in refused
    catalog.refresh_from_db()
    assert catalog.status == VersionStatus.PROPOSED

    cast.staff.is_superuser = True
    cast.staff.save()
    no_reason = act(client, "reject_versions", catalog)
    assert "Give a reason" in no_reason
    catalog.refresh_from_db()
    assert catalog.status == VersionStatus.PROPOSED

    assert "1 version(s) rejected" in act(client, "reject_versions", catalog, reason="Unmaintained")
    catalog.refresh_from_db()
    assert catalog.status == VersionStatus.REJECTED and catalog.reason == "Unmaintained"


def test_viewing_rights_alone_offer_no_actions(cast: Cast, tmp_path: Path) -> None:
    write_recipe(tmp_path, "demo", DEMO_RECIPE)
    call_command("sync_catalog", "--recipes-dir", str(tmp_path), verbosity=0)
    version = ExtensionVersion.objects.get(extension__name="demo", version="v1.0.0")
    # Staff curate the global catalog, but without the admin's change right the action is not offered.
    cast.staff.user_permissions.add(Permission.objects.get(codename="view_extensionversion"))
    client = Client()
    client.force_login(cast.staff)
    response = client.post(
        CHANGELIST,
        {"action": "approve_versions", "_selected_action": [version.pk], "reason": "x"},
        follow=True,
    )
    assert response.status_code == 200
    version.refresh_from_db()
    assert version.status == VersionStatus.PROPOSED
    assert not ApprovalRecord.objects.filter(version=version, action=ApprovalAction.APPROVED).exists()
