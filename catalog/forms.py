"""Forms behind the catalog pages. Validation of catalog rules lives in catalog.services."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from django import forms

from builds.pipeline.vocabulary import ARCHES, DEFAULT_ARCH
from catalog.models import Category, Role

if TYPE_CHECKING:
    from catalog.models import Team

# The arches flavours are built for in systemd's spelling.
ARCH_CHOICES = [("", "Any arch"), *((arch, arch) for arch in ARCHES)]


class VersionProposeForm(forms.Form):
    version = forms.CharField(
        label="Version",
        max_length=128,
        help_text="As the upstream tags it, e.g. 28.0.4 or v1.32.2 (letters, digits and . , _ + -).",
    )
    vars = forms.CharField(
        label="Template variables",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Only if the recipe's URLs need more than the version: one NAME=value per line.",
    )
    reason = forms.CharField(
        label="Why this version", required=False, widget=forms.Textarea(attrs={"rows": 2}), max_length=2000
    )

    def clean_vars(self) -> dict[str, str]:
        parsed: dict[str, str] = {}
        for number, line in enumerate(self.cleaned_data["vars"].splitlines(), start=1):
            if not line.strip():
                continue
            name, sep, value = line.partition("=")
            if not sep or not name.strip():
                raise forms.ValidationError(f"Line {number} is not NAME=value.")
            parsed[name.strip()] = value.strip()
        return parsed


class VersionDecisionForm(forms.Form):
    decision = forms.ChoiceField(
        label="Decision",
        choices=[("approve", "Approve (then pin every upstream digest)"), ("reject", "Reject")],
        widget=forms.RadioSelect,
    )
    reason = forms.CharField(
        label="Reason",
        required=False,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Recorded in the audit trail. Required to reject.",
    )


class CustomRecipeForm(forms.Form):
    """A team's private extension defined by a recipe (the same YAML as the built-in ones)."""

    team = forms.ChoiceField(label="Team")
    recipe = forms.CharField(
        label="Recipe (YAML)",
        widget=forms.Textarea(attrs={"rows": 16, "spellcheck": "false"}),
        max_length=64 * 1024,
        help_text="Same format as catalog/recipes/*.yaml; a curator approves each version it lists.",
    )

    def __init__(self, *args: Any, teams: Iterable[Team], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["team"]).choices = [(t.slug, t.name) for t in teams]


class CustomUploadForm(forms.Form):
    """A team's private extension made of uploaded files (a tar or zip laid out as the sysext's tree)."""

    team = forms.ChoiceField(label="Team")
    name = forms.CharField(label="Extension name", max_length=64, help_text="a-z, 0-9, '-' and '_'.")
    version = forms.CharField(label="Version", max_length=128)
    description = forms.CharField(label="Description", required=False, max_length=2000)
    category = forms.ChoiceField(label="Category", choices=Category.choices, initial=Category.TOOL)
    arches = forms.MultipleChoiceField(
        label="Arches the files run on",
        choices=ARCH_CHOICES[1:],
        widget=forms.CheckboxSelectMultiple,
        initial=[DEFAULT_ARCH],
    )
    file = forms.FileField(
        label="Archive",
        help_text="tar.gz, tar.xz, tar.zst or zip with every file under usr/ (not usr/sbin); no devices, "
        "setuid files or links leaving the tree.",
    )

    def __init__(self, *args: Any, teams: Iterable[Team], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["team"]).choices = [(t.slug, t.name) for t in teams]


ROLE_HELP = "Viewers read, builders compose and build, curators approve versions, admins manage the team."


class TeamMemberAddForm(forms.Form):
    """A team admin adds an existing account to the team (the same rules as the API's)."""

    username = forms.CharField(label="Username", max_length=150, help_text="The account must exist already.")
    role = forms.ChoiceField(label="Role", choices=Role.choices, initial=Role.VIEWER, help_text=ROLE_HELP)


class TeamMemberRoleForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Role.choices)
