"""Fair turns between teams: one team's flood of builds does not hold up another team's build.

The priority each build task is queued with (builds/fairness.py), and a real worker on Redis
taking a second team's single build before the first team's twenty queued ones.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from builds import services
from builds.fairness import build_queue_priority
from builds.models import Build, BuildState
from catalog.models import Team
from portal.routing import PRIORITY_STEPS
from tests.builds.build_support import serve_extension
from tests.builds.catalog_fixtures import Cast
from tests.builds.test_end_to_end import (  # noqa: F401 - module fixtures of the real worker
    api,
    bucket,
    cast,
    compose,
    finished,
    portal_side,
    queue_name,
    s3,
    start_worker,
    upstream_server,
    wait_for,
    worker_env,
)
from tests.upstream import UpstreamServer

FLOOD = 20
needs_worker = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))
    or not os.environ.get("REDIS_URL"),
    reason="needs DATABASE_URL (PostgreSQL) and REDIS_URL: a real worker shares the test database",
)


def _build(user: Any, team: Team, hostname: str) -> Build:
    flavour, _ = services.flavour_create(
        user=user,
        team=team,
        name=hostname,
        arch="x86-64",
        extensions=[{"name": "hello", "version": "v1.0.0"}],
        options={"hostname": hostname},
    )
    return services.build_request(flavour=flavour, user=user)[0]


def _priority(build: Build) -> int:
    return build_queue_priority(build_id=str(build.pk), lowest=PRIORITY_STEPS[-1])


def test_a_teams_later_builds_queue_behind_another_teams_first(small_catalog: Cast) -> None:
    blue = [_build(small_catalog.bob, small_catalog.blue, f"blue-{n}") for n in range(12)]
    red = _build(small_catalog.carol, small_catalog.red, "red-1")
    assert [_priority(b) for b in blue] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9]
    assert _priority(red) == 0
    # A finished build is no longer ahead of anyone.
    Build.objects.filter(pk=blue[0].pk).update(state=BuildState.SUCCEEDED)
    assert _priority(blue[1]) == 0
    assert build_queue_priority(build_id="not-a-uuid", lowest=9) == 0


@pytest.mark.integration
@needs_worker
def test_another_teams_build_starts_before_a_flood_of_twenty_is_done(
    cast: Cast,  # noqa: F811 - the fixture imported above
    worker_env: dict[str, str],  # noqa: F811 - the fixture imported above
    queue_name: str,  # noqa: F811 - the fixture imported above
    portal_side: Any,  # noqa: F811 - the fixture imported above
    upstream_server: UpstreamServer,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    serve_extension(upstream_server, "hello")
    blue, red = api(cast.bob), api(cast.carol)
    # Everything is queued before the one worker starts: first in, first out would run red last.
    flood = []
    for n in range(FLOOD):
        flavour = compose(blue, f"flood {n}", ["hello"], options={"hostname": f"flood-{n}"})
        flood.append(blue.post(f"/api/flavours/{flavour['id']}/builds/").json()["id"])
    lone = compose(red, "lone", ["hello"], options={"hostname": "lone"})
    lone_id = red.post(f"/api/flavours/{lone['id']}/builds/").json()["id"]

    worker = start_worker(worker_env, queue_name, tmp_path / "worker.log", concurrency=1)
    try:
        body = wait_for(red, lone_id, worker, finished)
        assert body["state"] == "succeeded", (body, worker.tail())
        red_started = Build.objects.get(pk=lone_id).started_at
        blue_started = [b.started_at for b in Build.objects.filter(pk__in=flood) if b.started_at is not None]
        # Red's build waited for at most blue's first (already taken), not for blue's twenty.
        assert sum(1 for t in blue_started if t < red_started) <= 1, (red_started, sorted(blue_started))
        done = Build.objects.filter(pk__in=flood, state__in=[BuildState.SUCCEEDED]).count()
        assert done < FLOOD
    finally:
        worker.stop()
