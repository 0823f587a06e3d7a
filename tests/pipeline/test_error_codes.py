"""Every error code the code base raises is in the registry, documented, and the registry holds no
code nobody raises (builds/pipeline/error_codes.py).

The source is scanned, not imported: a code is the first argument of an error class (or of a
helper returning one), a ``code=``/``error_code=`` argument, a ``"code: message"`` string, or a
``.code ==`` comparison. Codes built from f-strings are listed in ``FSTRING_CODES``; a new f-string
code fails this test until it is listed there.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from builds.pipeline.error_codes import CODES, STATUS_BY_KIND, ErrorKind
from builds.pipeline.errors import BakehouseError, PipelineError

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("builds", "catalog", "portal")
CODE = re.compile(r"^[a-z]+(\.[a-z0-9-]+)?$")  # "forbidden" has no area
CODE_PREFIX = re.compile(r"^([a-z]+\.[a-z0-9-]+): ")

# Callables whose first argument is an error code.
ERROR_CALLS = {
    "BakehouseError",
    "PipelineError",
    "CatalogError",
    "CatalogNotFound",
    "CatalogForbidden",
    "CatalogConflict",
    "BuildRefused",
    "ArtifactStoreError",
    "_refuse",  # catalog/uploads.py
}
CODE_KEYWORDS = {"code", "error_code", "timeout_code"}


def _tree_problems() -> set[str]:
    """The ``problem`` arguments of tree.py's ``_fail(area, problem, message)``."""
    tree = ast.parse((ROOT / "builds/pipeline/tree.py").read_text())
    return {
        node.args[1].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "_fail"
        and isinstance(node.args[1], ast.Constant)
    }


def _run_command_areas() -> set[str]:
    return {code.split(".")[0] for code, how in _scan()[0].items() if "error_code" in how}


# f-string codes, by their source text, and every code each one can produce.
FSTRING_CODES = {
    # pipeline/tree.py check_entries(area="tree" | "image") -> _fail(area, problem, ...)
    "f'{area}.{problem}'": lambda: {f"{a}.{p}" for a in ("tree", "image") for p in _tree_problems()},
    # pipeline/egress.py EgressRule(area="fetch" | "webhook")
    "f'{self.area}.invalid-url'": lambda: {"fetch.invalid-url", "webhook.invalid-url"},
    "f'{self.area}.unresolvable-host'": lambda: {"fetch.unresolvable-host", "webhook.unresolvable-host"},
    "f'{self.area}.refused-address'": lambda: {"fetch.refused-address", "webhook.refused-address"},
    # pipeline/command.py: a tool that times out raises <area of its error_code>.timeout
    "f'{area}.timeout'": lambda: {f"{area}.timeout" for area in _run_command_areas()},
}


def _name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _leading_text(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value)
    return None


def _scan() -> tuple[dict[str, set[str]], set[str], list[str]]:
    """(raised code -> where, every code-like string anywhere, f-strings nobody listed)."""
    raised: dict[str, set[str]] = {}
    mentioned: set[str] = set()
    unlisted: list[str] = []

    def add(code: str, where: str) -> None:
        raised.setdefault(code, set()).add(where)

    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            where = str(path.relative_to(ROOT))
            tree = ast.parse(path.read_text(), filename=where)
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    mentioned.add(node.value)
                if isinstance(node, ast.Compare) and _name(node.left) == "code":
                    for right in node.comparators:
                        text = _leading_text(right)
                        if isinstance(right, ast.Constant) and text and CODE.match(text):
                            add(right.value, f"{where} (compared)")
                if not isinstance(node, ast.Call):
                    continue
                arguments: list[tuple[str, ast.expr]] = []
                name = _name(node.func)
                if node.args and name in ERROR_CALLS:
                    arguments.append(("positional", node.args[0]))
                elif node.args and name == "__init__":  # super().__init__("code", ...) in a subclass
                    text = _leading_text(node.args[0])
                    if isinstance(node.args[0], ast.Constant) and text and CODE.match(text) and "." in text:
                        add(text, f"{where} (super)")
                arguments += [(kw.arg, kw.value) for kw in node.keywords if kw.arg in CODE_KEYWORDS]
                for how, value in arguments:
                    values = value.values if isinstance(value, ast.BoolOp) else [value]
                    for item in values:
                        if isinstance(item, ast.Constant) and isinstance(item.value, str):
                            # Keyword codes without an area are Django's (ValidationError code=).
                            if CODE.match(item.value) and (how == "positional" or "." in item.value):
                                add(item.value, f"{where} ({how})")
                        elif isinstance(item, ast.JoinedStr):
                            source = ast.unparse(item)
                            if source.startswith("f'{code}:"):
                                continue  # BakehouseError's own str(): "code: message"
                            if source in FSTRING_CODES:
                                mentioned.add(source)
                            else:
                                unlisted.append(f"{where}:{node.lineno} {source}")
                # "code: message" sentences (pinning errors are recorded this way).
                for argument in node.args:
                    text = _leading_text(argument)
                    if text and (match := CODE_PREFIX.match(text)):
                        add(match.group(1), f"{where} (sentence)")
    return raised, mentioned, unlisted


@pytest.fixture(scope="module")
def scan() -> tuple[dict[str, set[str]], set[str], list[str]]:
    return _scan()


def _all_raised(scan: tuple[dict[str, set[str]], set[str], list[str]]) -> set[str]:
    raised, mentioned, _ = scan
    codes = set(raised)
    for source, expand in FSTRING_CODES.items():
        if source in mentioned:
            codes |= expand()
    return codes


def test_every_raised_code_is_registered(scan) -> None:
    raised, _, unlisted = scan
    assert not unlisted, f"f-string error codes not in FSTRING_CODES: {unlisted}"
    missing = sorted(_all_raised(scan) - set(CODES))
    assert not missing, "register these in builds/pipeline/error_codes.py: " + ", ".join(
        f"{code} ({', '.join(sorted(raised.get(code, {'f-string'})))})" for code in missing
    )
    assert len(raised) > 100  # the scan finds the code base's raises, not nothing


def test_the_registry_has_no_unused_codes(scan) -> None:
    _, mentioned, _ = scan
    unused = sorted(set(CODES) - _all_raised(scan) - mentioned)
    assert not unused, f"no code raises these; remove them from the registry: {unused}"


def test_every_code_is_documented() -> None:
    for entry in CODES.values():
        assert CODE.match(entry.code), entry.code
        assert entry.kind in ErrorKind
        assert len(entry.meaning) > 10 and entry.meaning.endswith("."), entry
        assert entry.http_status in (400, 403, 404, 409, 413, 502, 503), entry


def test_an_error_takes_kind_retryable_and_status_from_the_registry() -> None:
    missing = PipelineError("tool.missing", "mksquashfs is not installed")
    assert (missing.kind, missing.retryable, missing.status) == (ErrorKind.INFRASTRUCTURE, False, 503)
    assert not missing.is_users_fault
    bad_pin = PipelineError("recipe.invalid-pin", "x")
    assert (bad_pin.kind, bad_pin.retryable, bad_pin.status) == (ErrorKind.USER, False, 400)
    # A raise site overrides the registry: an upstream 503 is retryable, its 404 is not.
    assert PipelineError("fetch.http-error", "503", retryable=True).retryable
    assert not PipelineError("fetch.http-error", "404").retryable
    assert PipelineError("fetch.http-error", "x").status == STATUS_BY_KIND[ErrorKind.UPSTREAM]
    assert PipelineError("store.unavailable", "x").retryable


class _NotThere(PipelineError):
    """A subclass with its own constructor, like the store's ArtifactNotFound."""

    def __init__(self, key: str) -> None:
        super().__init__("store.not-found", f"nothing under {key}")
        self.key = key


class _Conflict(BakehouseError):
    default_status = 409


def test_errors_keep_every_attribute_across_pickling() -> None:
    import pickle

    for error in (
        PipelineError("fetch.timeout", "slow", output="log"),
        _NotThere("extensions/x"),
        _Conflict("version.exists", "already there"),
    ):
        copy = pickle.loads(  # noqa: S301
            pickle.dumps(error)
        )
        assert type(copy) is type(error)
        assert vars(copy) == vars(error) and str(copy) == str(error)
    assert (
        pickle.loads(  # noqa: S301
            pickle.dumps(_Conflict("version.exists", "x"))
        ).status
        == 409
    )
