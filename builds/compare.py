"""Compare two flavours, typically two revisions of one (same ``lineage``): which extensions were
added, removed or changed version, which options changed, and how the Butane config differs.

Everything is read from the canonical documents (the flavours' IDs hash exactly these choices) and
from the Butane each flavour published; a flavour not built yet is compared with its preview (the
one the composer shows), and the answer says which one was used.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

from builds.models import Flavour

ADDED, REMOVED, CHANGED, RECIPE_CHANGED = "added", "removed", "changed", "recipe-changed"


@dataclass(frozen=True)
class ExtensionChange:
    """One extension that differs: ``change`` is added, removed, changed (another version) or
    recipe-changed (same version, other recipe digest or upstream pins: other image bytes)."""

    name: str
    change: str
    old_version: str | None
    new_version: str | None


@dataclass(frozen=True)
class OptionChange:
    name: str
    old: Any
    new: Any


@dataclass(frozen=True)
class ButaneSide:
    text: str
    source: str  # "published" (the latest successful build's config.bu), "preview", or "" (none)


@dataclass(frozen=True)
class DiffLine:
    """A line of a unified diff and how to show it: add, remove, hunk, file or context."""

    text: str
    kind: str


@dataclass(frozen=True)
class FlavourComparison:
    old: Flavour
    new: Flavour
    extensions: list[ExtensionChange]
    unchanged: list[str]  # names of extensions in both, identical
    options: list[OptionChange]
    old_butane: ButaneSide
    new_butane: ButaneSide
    butane_diff: list[DiffLine]


def _document(flavour: Flavour) -> dict[str, Any]:
    return dict(json.loads(flavour.canonical))


def extension_changes(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[ExtensionChange], list[str]]:
    """Differences between the ``extensions`` of two canonical documents, by name."""
    before = {e["name"]: e for e in old.get("extensions", [])}
    after = {e["name"]: e for e in new.get("extensions", [])}
    changes: list[ExtensionChange] = []
    unchanged: list[str] = []
    for name in sorted(before.keys() | after.keys()):
        was, now = before.get(name), after.get(name)
        if was is None:
            changes.append(ExtensionChange(name, ADDED, None, now["version"] if now else None))
        elif now is None:
            changes.append(ExtensionChange(name, REMOVED, was["version"], None))
        elif was["version"] != now["version"]:
            changes.append(ExtensionChange(name, CHANGED, was["version"], now["version"]))
        elif was != now:
            changes.append(ExtensionChange(name, RECIPE_CHANGED, was["version"], now["version"]))
        else:
            unchanged.append(name)
    return changes, unchanged


def option_changes(old: dict[str, Any], new: dict[str, Any]) -> list[OptionChange]:
    """Options that differ (an option one side does not have reads as None), then the arch."""
    before, after = old.get("options", {}), new.get("options", {})
    changes = [
        OptionChange(name, before.get(name), after.get(name))
        for name in sorted(before.keys() | after.keys())
        if before.get(name) != after.get(name)
    ]
    if old.get("arch") != new.get("arch"):
        changes.append(OptionChange("arch", old.get("arch"), new.get("arch")))
    return changes


def butane_diff(old: str, new: str, *, old_name: str, new_name: str) -> list[DiffLine]:
    """A unified diff of two Butane texts, each line tagged for display."""
    lines: list[DiffLine] = []
    for text in difflib.unified_diff(
        old.splitlines(), new.splitlines(), fromfile=old_name, tofile=new_name, lineterm=""
    ):
        if text.startswith(("---", "+++")):
            kind = "file"
        elif text.startswith("@@"):
            kind = "hunk"
        elif text.startswith("+"):
            kind = "add"
        elif text.startswith("-"):
            kind = "remove"
        else:
            kind = "context"
        lines.append(DiffLine(text, kind))
    return lines


def flavour_butane(flavour: Flavour) -> ButaneSide:
    """The Butane a flavour published, or the composer's preview of it before it is built."""
    from builds.flavours import FlavourInvalid, flavour_choices_resolve
    from builds.forms import flavour_state
    from builds.models import ArtifactKind
    from builds.pipeline.errors import PipelineError
    from builds.preview import flavour_preview_butane
    from builds.published import flavour_published_text

    published = flavour_published_text(flavour, ArtifactKind.BUTANE)
    if published:
        return ButaneSide(published, "published")
    state = flavour_state(flavour)
    try:
        choices = flavour_choices_resolve(
            team=flavour.team, previous=list(flavour.extension_versions.all()), **state.flavour_arguments()
        )
        return ButaneSide(flavour_preview_butane(choices=choices).text, "preview")
    except (FlavourInvalid, PipelineError):
        return ButaneSide("", "")


def flavour_compare(*, old: Flavour, new: Flavour) -> FlavourComparison:
    """How ``new`` differs from ``old`` (any two flavours the caller may read)."""
    old_document, new_document = _document(old), _document(new)
    changes, unchanged = extension_changes(old_document, new_document)
    old_butane, new_butane = flavour_butane(old), flavour_butane(new)
    return FlavourComparison(
        old=old,
        new=new,
        extensions=changes,
        unchanged=unchanged,
        options=option_changes(old_document, new_document),
        old_butane=old_butane,
        new_butane=new_butane,
        butane_diff=butane_diff(
            old_butane.text,
            new_butane.text,
            old_name=f"revision {old.revision} ({old.pk[:12]})/config.bu",
            new_name=f"revision {new.revision} ({new.pk[:12]})/config.bu",
        ),
    )
