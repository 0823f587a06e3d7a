"""What the build page and the build API tell about one build, computed once for both.

- ``step_groups``: the recorded steps (``BuildStep``) grouped per extension (bake, verify and any
  per-image step) and for the flavour (plan, sign, publish, notify and any other step), in the
  order they ran, with start, end and duration;
- ``queue_estimate``: a queued build's position and about how long until it starts, from the
  durations of recent succeeded builds;
- ``failure_advice``: a failed or cancelled build's code, sentence and what to do next (retry,
  or whom to ask), by whose move it is (``error_kind``, from the code registry).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.utils import timezone

from builds.models import ACTIVE_BUILD_STATES, Artifact, ArtifactKind, Build, BuildState, BuildStep
from builds.pipeline import error_codes
from builds.selectors import build_queue_position

# How many recent succeeded builds the queue estimate reads.
ESTIMATE_SAMPLE = 20


def duration_text(seconds: float | None) -> str:
    """For people: "0.4 s", "12 s", "3 min 5 s", "1 h 2 min" ('' when unknown)."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{max(seconds, 0):.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


@dataclass
class StepGroup:
    """The steps of one extension (``extension`` set) or of the flavour (``extension`` empty)."""

    extension: str
    steps: list[BuildStep] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"Extension {self.extension}" if self.extension else "Flavour"

    @property
    def key(self) -> str:
        return f"extension:{self.extension}" if self.extension else "flavour"

    @property
    def started_at(self) -> datetime | None:
        return min((step.started_at for step in self.steps), default=None)

    @property
    def finished_at(self) -> datetime | None:
        if not self.steps or any(step.finished_at is None for step in self.steps):
            return None
        return max(step.finished_at for step in self.steps if step.finished_at is not None)

    @property
    def outcome(self) -> str:
        """failed if a step failed, cancelled if one was stopped, '' while one runs, else ok."""
        outcomes = [step.outcome for step in self.steps]
        for ended in ("failed", "cancelled"):
            if ended in outcomes:
                return ended
        return "" if "" in outcomes else "ok"

    @property
    def duration_seconds(self) -> float | None:
        return _seconds(self.started_at, self.finished_at)


def step_groups(steps: list[BuildStep]) -> list[StepGroup]:
    """Extensions first (by name: what a user looks for), then the flavour's steps. Each group's
    steps in the order they ran; a step name nobody here knows is simply shown where it ran."""
    groups: dict[str, StepGroup] = {}
    for step in sorted(steps, key=lambda s: (s.started_at, s.pk or 0)):
        groups.setdefault(step.extension, StepGroup(step.extension)).steps.append(step)
    flavour = groups.pop("", None)
    ordered = [groups[name] for name in sorted(groups)]
    return [*ordered, flavour] if flavour else ordered


def step_duration_seconds(step: BuildStep) -> float | None:
    return _seconds(step.started_at, step.finished_at)


def build_duration_seconds(build: Build) -> float | None:
    """From the first step to the end (to now while it runs); None before it started."""
    if build.started_at is None:
        return None
    return _seconds(build.started_at, build.finished_at or timezone.now())


def queued_seconds(build: Build) -> float | None:
    """How long the build waited for a worker (so far, while still queued)."""
    if build.started_at is None and build.state != BuildState.QUEUED:
        return None
    return _seconds(build.created_at, build.started_at or timezone.now())


# --- queue ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueEstimate:
    position: int
    # Builds working right now: at least that many run side by side here.
    running: int
    # Median duration of the recent succeeded builds; None without any.
    typical_seconds: float | None
    # About how long until this build starts; None without history.
    wait_seconds: float | None

    @property
    def text(self) -> str:
        where = f"Position {self.position} in the queue"
        if self.wait_seconds is None:
            return f"{where}; no estimate yet: no build has succeeded here so far."
        if self.wait_seconds < 60:
            return f"{where}; it should start in less than a minute."
        return f"{where}; it should start in about {duration_text(self.wait_seconds)}."


@dataclass(frozen=True)
class QueueLoad:
    """What every queued build's estimate shares: computed once per page or API list."""

    running: int
    typical_seconds: float | None


def queue_load() -> QueueLoad:
    """The builds working right now and the median duration of the last ``ESTIMATE_SAMPLE``
    succeeded builds."""
    running = Build.objects.filter(state__in=ACTIVE_BUILD_STATES).exclude(state=BuildState.QUEUED).count()
    recent = (
        Build.objects.filter(state=BuildState.SUCCEEDED, started_at__isnull=False, finished_at__isnull=False)
        .order_by("-finished_at")
        .values_list("started_at", "finished_at")[:ESTIMATE_SAMPLE]
    )
    durations = [(end - start).total_seconds() for start, end in recent if start and end]
    return QueueLoad(running, statistics.median(durations) if durations else None)


def queue_estimate(build: Build, *, load: QueueLoad | None = None) -> QueueEstimate | None:
    """A queued build's place in line and about when it starts: the median duration of the last
    ``ESTIMATE_SAMPLE`` succeeded builds, times its position, divided by the builds running side
    by side right now (at least one). None once the build has started or ended. A list passes
    one ``load`` for all its builds (and counts positions in its query: no query per row)."""
    position = build_queue_position(build=build)
    if position is None:
        return None
    load = load or queue_load()
    typical = load.typical_seconds
    wait = typical * position / max(load.running, 1) if typical is not None else None
    return QueueEstimate(position, load.running, typical, wait)


# --- failure --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailureAdvice:
    code: str
    sentence: str
    kind: str  # user | upstream | infrastructure ('' for an unknown code)
    # What to do, in a sentence addressed to the reader.
    advice: str
    # Retry is offered: the reader is a builder of the team and retrying can help (not for a
    # user error, which fails the same way again; the API still accepts it).
    can_retry: bool
    # Whom to ask when the reader cannot act: "a curator of team blue", "an operator"...
    ask: str


def failure_advice(build: Build, *, can_build: bool) -> FailureAdvice | None:
    """The error code, its sentence and the next move, for a failed or cancelled build."""
    if build.state not in (BuildState.FAILED, BuildState.CANCELLED):
        return None
    team = build.flavour.team.name
    known = error_codes.lookup(build.error_code) if build.error_code else None
    kind = str(known.kind) if known else ""
    builder = f"a builder of team {team}"
    if build.state == BuildState.CANCELLED:
        ask, advice = builder, "The build was stopped before it finished; nothing new was published. "
        advice += "Build it again when you are ready." if can_build else f"Ask {builder} to build it again."
    elif kind == error_codes.ErrorKind.INFRASTRUCTURE:
        ask = "an operator of this Bakehouse installation"
        advice = f"This is a fault of this Bakehouse installation, not of your flavour: ask {ask} to fix it"
        advice += ", then retry the build." if can_build else f", then ask {builder} to retry the build."
    elif kind == error_codes.ErrorKind.UPSTREAM:
        ask = f"a curator of team {team}"
        advice = "A server Bakehouse downloads from misbehaved: retry later"
        if known is not None and known.retryable:
            advice += f"; if it keeps failing, ask {ask} to check the upstream (its URL is in the log)."
        else:
            advice += f", or ask {ask} to check the upstream (its URL is in the log)."
        if not can_build:
            advice += f" Only {builder} can retry."
    else:
        ask = f"a curator of team {team}"
        advice = (
            "The flavour or one of its extensions needs a change (the sentence above says what): "
            f"edit the flavour to make a new revision, or ask {ask} to fix the extension's recipe or pins. "
            "Retrying the same flavour fails the same way."
        )
        can_build = False  # the same inputs fail the same way: no Retry button
    return FailureAdvice(
        code=build.error_code,
        sentence=build.error_message,
        kind=kind,
        advice=advice,
        can_retry=can_build,
        ask=ask,
    )


# --- success --------------------------------------------------------------------------------------


def install_command(build: Build) -> str:
    """The commands that install a node from a succeeded build's published Ignition ('' without)."""
    from builds.access import artifact_url_for
    from builds.flavours import FlavourOptions

    if build.state != BuildState.SUCCEEDED:
        return ""
    # From the build's artifacts as fetched (a list prefetches them: no query per row).
    ignition: Artifact | None = next(
        (a for a in build.artifacts.all() if a.kind == ArtifactKind.IGNITION), None
    )
    if ignition is None:
        return ""
    url = artifact_url_for(build.flavour)(ignition.key)
    channel = FlavourOptions.from_document(build.flavour.options).channel
    return f"curl -fsSLo config.ign {url}\nsudo flatcar-install -d /dev/sda -C {channel} -i config.ign"


def report_context(build: Build, *, can_build: bool) -> dict[str, Any]:
    """Everything the page shows beyond the build's own fields (the API serialises the same)."""
    steps = list(build.steps.all())
    return {
        "groups": step_groups(steps),
        "duration_seconds": build_duration_seconds(build),
        "queued_seconds": queued_seconds(build),
        "queue": queue_estimate(build),
        "failure": failure_advice(build, can_build=can_build),
        "install_command": install_command(build),
    }
