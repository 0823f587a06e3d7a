"""Our own Butane fixtures (``fixtures/``), checked like the shared goldens; never skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pipeline.butane.support import FIXTURES, check_error_case, check_output_case


def _cases(pattern: str) -> list[Path]:
    return sorted(FIXTURES.glob(pattern))


def test_fixtures_present() -> None:
    assert len(_cases("*.bu")) >= 3
    assert len(_cases("errors/*.bu")) >= 7


@pytest.mark.parametrize("case", _cases("*.bu"), ids=lambda p: p.stem)
@pytest.mark.parametrize("pretty", [False, True], ids=["compact", "pretty"])
def test_fixture_output(case: Path, pretty: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check_output_case(case, pretty, tmp_path, capsys)


@pytest.mark.parametrize("case", _cases("errors/*.bu"), ids=lambda p: p.stem)
def test_fixture_errors(case: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check_error_case(case, capsys)
