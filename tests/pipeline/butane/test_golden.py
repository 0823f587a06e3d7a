"""Every golden pair from the real butane v0.23 tool: same Ignition, same report, same exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pipeline.butane.support import GOLDEN, check_error_case, check_output_case

pytestmark = pytest.mark.skipif(
    not GOLDEN.is_dir(), reason=f"golden Butane pairs not present at {GOLDEN} (../shared is absent)"
)


def _cases(pattern: str) -> list[Path]:
    return sorted(GOLDEN.glob(pattern)) if GOLDEN.is_dir() else []


def test_all_golden_pairs_collected() -> None:
    assert len(_cases("*.bu")) >= 9
    assert len(_cases("errors/*.bu")) >= 13


@pytest.mark.parametrize("case", _cases("*.bu"), ids=lambda p: p.stem)
@pytest.mark.parametrize("pretty", [False, True], ids=["compact", "pretty"])
def test_golden_output(case: Path, pretty: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check_output_case(case, pretty, tmp_path, capsys)


@pytest.mark.parametrize("case", _cases("errors/*.bu"), ids=lambda p: p.stem)
def test_golden_errors(case: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check_error_case(case, capsys)
