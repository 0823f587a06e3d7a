"""YAML the way Butane's parser (go-yaml v3) reads it, on top of PyYAML's composer.

PyYAML resolves scalars by YAML 1.1 (``yes`` is a bool, ``0644`` an int everywhere), while Butane
decodes with go-yaml v3 straight into typed Go fields: a string field keeps the scalar's source
text, a bool field takes ``true``/``false`` plus the 1.1 spellings, an int field takes Go's integer
syntaxes. So we only use PyYAML to build the node tree (with marks) and resolve each scalar here,
per field type, with go-yaml's rules and its error wording.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from typing import Literal

import yaml

NULL_VALUES = frozenset({"", "~", "null", "Null", "NULL"})
TRUE_VALUES = frozenset({"true", "True", "TRUE"})
FALSE_VALUES = frozenset({"false", "False", "FALSE"})
# go-yaml accepts these only when the target field is a bool (YAML 1.1 compatibility).
LEGACY_TRUE = frozenset({"y", "Y", "yes", "Yes", "YES", "on", "On", "ON"})
LEGACY_FALSE = frozenset({"n", "N", "no", "No", "NO", "off", "Off", "OFF"})
_SPECIAL_FLOATS = frozenset(
    {".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF", ".nan", ".NaN", ".NAN"}
)
_YAML_STYLE_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_TIMESTAMP = re.compile(
    r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}"
    r"(([Tt]|[ \t]+)[0-9]{1,2}:[0-9]{2}:[0-9]{2}(\.[0-9]*)?([ \t]*(Z|[-+][0-9]{1,2}(:[0-9]{2})?))?)?$"
)
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_UINT64_MAX = (1 << 64) - 1

Tag = Literal["!!null", "!!bool", "!!int", "!!float", "!!str", "!!timestamp", "!!map", "!!seq"]


@dataclass(frozen=True)
class Mark:
    """1-based line and column, as go-yaml reports them."""

    line: int
    column: int


class YAMLSyntaxError(Exception):
    """The document is not YAML at all; ``str()`` is go-yaml-like (``yaml: line N: ...``)."""


def mark_of(node: yaml.Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


MAX_DEPTH = 10000  # go-yaml's limit on nesting
MAX_EXPANDED_NODES = 200_000  # aliases expanded; far beyond any real config (go-yaml refuses bombs too)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse alias bombs and cycles before anything walks the tree recursively."""
    budget = MAX_EXPANDED_NODES
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise YAMLSyntaxError("yaml: document contains excessive aliasing")
        if depth > MAX_DEPTH:
            raise YAMLSyntaxError(f"yaml: exceeded max depth of {MAX_DEPTH}")
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)


# Untagged scalars get this tag, so an explicit ``!!str``/``!!int`` ... stays visible on the node
# (PyYAML would otherwise resolve plain scalars by YAML 1.1 and forget what the author wrote).
UNTAGGED = "?"
_YAML_PREFIX = "tag:yaml.org,2002:"


class _Loader(yaml.SafeLoader):
    """PyYAML's composer without implicit resolution: every scalar is resolved here, go-yaml's way."""

    DEFAULT_SCALAR_TAG = UNTAGGED  # type: ignore[misc]  # a Final in the stubs, a plain class attribute in PyYAML
    yaml_implicit_resolvers: dict[str, list[tuple[str, object]]] = {}


_DIRECTIVE = re.compile(r"^%YAML[ \t]+([0-9]+)\.([0-9]+)")


def _check_directives(text: str) -> None:
    """go-yaml v3 (a libyaml port) accepts only ``%YAML 1.1``; PyYAML also takes 1.2.

    source: go-yaml v3 parserc.go yaml_parser_process_directives ("found incompatible YAML
    document", "found duplicate %YAML directive"); a parser error names the mark's 0-based line,
    and none when it is 0 (yaml.go ``parser.fail``).
    """
    seen = False
    for index, line in enumerate(text.split("\n")):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not line.startswith("%"):
            return
        match = _DIRECTIVE.match(line)
        if match is None:
            continue
        where = f"line {index}: " if index else ""
        if seen:
            raise YAMLSyntaxError(f"yaml: {where}found duplicate %YAML directive")
        seen = True
        if (match.group(1), match.group(2)) != ("1", "1"):
            raise YAMLSyntaxError(f"yaml: {where}found incompatible YAML document")


def _check_escapes(root: yaml.Node) -> None:
    """go-yaml refuses ``\\uD800``-style escapes (surrogates) in double-quoted scalars; PyYAML
    turns them into lone surrogates. source: go-yaml v3 scannerc.go yaml_parser_scan_flow_scalar
    ("found invalid Unicode character escape code"; a scanner error names the 1-based line)."""
    stack: list[yaml.Node] = [root]
    first: int | None = None
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.extend((key, value))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.ScalarNode) and node.style == '"':
            if any("\ud800" <= ch <= "\udfff" for ch in node.value):
                line = node.start_mark.line + 1
                first = line if first is None else min(first, line)
    if first is not None:  # the scanner stops at the first one in the text
        raise YAMLSyntaxError(f"yaml: line {first}: found invalid Unicode character escape code")


def compose(text: str) -> yaml.Node | None:
    """The first document's node tree (go-yaml's decoder also reads only the first one)."""
    try:
        _check_directives(text)
        documents = yaml.compose_all(text, Loader=_Loader)
        root = next(iter(documents), None)
        if root is not None:
            _check_expansion(root)
            _check_escapes(root)
        return root
    except RecursionError as exc:
        raise YAMLSyntaxError(f"yaml: exceeded max depth of {MAX_DEPTH}") from exc
    except ValueError as exc:  # chr() of an escape beyond U+10FFFF
        raise YAMLSyntaxError("yaml: found invalid Unicode character escape code") from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "invalid YAML"
        raise YAMLSyntaxError(f"yaml: line {line}: {problem}") from exc
    except yaml.YAMLError as exc:
        raise YAMLSyntaxError(f"yaml: {exc}") from exc


def is_plain(node: yaml.ScalarNode) -> bool:
    return node.style is None


def _go_parse_int(text: str) -> int | None:
    """Go's ``strconv.ParseInt(text, 0, 64)`` (prefixes 0x, 0o, 0b, legacy leading-0 octal)."""
    body, sign = text, 1
    if body[:1] in "+-" and body:
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    if not body:
        return None
    base, digits = 10, body
    lower = body[:2].lower()
    if lower == "0x":
        base, digits = 16, body[2:]
    elif lower == "0o":
        base, digits = 8, body[2:]
    elif lower == "0b":
        base, digits = 2, body[2:]
    elif body[0] == "0" and len(body) > 1:
        base, digits = 8, body[1:]
    alphabet = "0123456789abcdef"[:base]
    if not digits or any(ch not in alphabet for ch in digits.lower()):
        return None
    value = sign * int(digits, base)
    if not _INT64_MIN <= value <= _INT64_MAX:
        # ParseUint may still take it (no sign); the caller handles that case.
        return None
    return value


def explicit_tag(node: yaml.Node) -> str | None:
    """The tag the author wrote (``!!int``, ``!foo``), short form; None when untagged."""
    tag = node.tag
    if tag in (UNTAGGED, "!") or (
        not isinstance(node, yaml.ScalarNode) and tag in (_YAML_PREFIX + "map", _YAML_PREFIX + "seq")
    ):
        return None
    return "!!" + tag[len(_YAML_PREFIX) :] if tag.startswith(_YAML_PREFIX) else tag


_RESOLVABLE = frozenset({"!!str", "!!bool", "!!int", "!!float", "!!timestamp", "!!null"})


def resolve(node: yaml.ScalarNode) -> tuple[Tag, object]:
    """go-yaml v3's ``resolve()`` for one scalar: its tag and value.

    Quoted scalars are strings unless explicitly tagged; an explicit tag of the core schema makes
    go-yaml resolve the text as if plain and insist on that tag (``!!bool "true"`` is true,
    ``!!bool yes`` an error), ``!!float`` takes an int. source: go-yaml v3 resolve.go ``resolve``,
    decode.go ``scalar``/``indicatedString``.
    """
    tag = explicit_tag(node)
    if tag is None:
        if not is_plain(node):
            return "!!str", node.value
        return _resolve_plain(node.value)
    if tag == "!!binary":
        # decode.go scalar(): base64.StdEncoding (which skips CR and LF); the bytes become the
        # Go string as they are, so they are carried here as surrogate escapes.
        try:
            data = base64.b64decode(node.value.replace("\r", "").replace("\n", ""), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise YAMLSyntaxError("yaml: !!binary value contains invalid base64 data") from exc
        return "!!str", data.decode("utf-8", "surrogateescape")
    if tag == "!!str" or tag not in _RESOLVABLE:
        return "!!str", node.value  # unknown tags keep the text (go-yaml: not resolvable)
    found, value = _resolve_plain(node.value)
    if found == "!!timestamp" and tag != "!!timestamp":
        found, value = "!!str", node.value
    if found == tag:
        return found, value
    if tag == "!!float" and found == "!!int" and isinstance(value, int):
        return "!!float", float(value)
    raise YAMLSyntaxError(f"yaml: cannot decode {found} `{node.value}` as a {tag}")


def _resolve_plain(text: str) -> tuple[Tag, object]:
    if text in NULL_VALUES:
        return "!!null", None
    if text in TRUE_VALUES:
        return "!!bool", True
    if text in FALSE_VALUES:
        return "!!bool", False
    if text in _SPECIAL_FLOATS:
        return "!!float", math.nan if "nan" in text.lower() else (-math.inf if text[0] == "-" else math.inf)
    if text[:1] in "+-.0123456789":
        if _TIMESTAMP.match(text):
            return "!!timestamp", text
        plain = text.replace("_", "")
        as_int = _go_parse_int(plain)
        if as_int is not None:
            return "!!int", as_int
        if plain.isdigit() and int(plain) <= _UINT64_MAX and not plain.startswith("0"):
            return "!!int", int(plain)
        if _YAML_STYLE_FLOAT.match(plain):
            return "!!float", float(plain)
        for prefix, sign in (("0b", 1), ("-0b", -1)):
            if plain.startswith(prefix) and plain[len(prefix) :] and set(plain[len(prefix) :]) <= {"0", "1"}:
                return "!!int", sign * int(plain[len(prefix) :], 2)
        if plain.startswith("0o") and plain[2:] and set(plain[2:]) <= set("01234567"):
            return "!!int", int(plain[2:], 8)
    return "!!str", text


def node_tag(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "!!map"
    if isinstance(node, yaml.SequenceNode):
        return "!!seq"
    assert isinstance(node, yaml.ScalarNode)
    return explicit_tag(node) or resolve(node)[0]


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and resolve(node)[0] == "!!null"


def cannot_unmarshal(node: yaml.Node, go_type: str) -> str:
    """go-yaml's type error text, e.g. ``line 6: cannot unmarshal !!str `true` into bool``."""
    tag = node_tag(node)
    shown = ""
    if isinstance(node, yaml.ScalarNode):
        value = node.value
        shown = f" `{value[:7]}...`" if len(value) > 10 else f" `{value}`"
    return f"line {mark_of(node).line}: cannot unmarshal {tag}{shown} into {go_type}"


class ScalarError(Exception):
    """A scalar does not fit its field; ``str()`` is go-yaml's ``line N: cannot unmarshal ...``."""


def to_str(node: yaml.Node) -> str | None:
    """A Go ``*string`` field: the scalar's source text, or None for null."""
    if not isinstance(node, yaml.ScalarNode):
        raise ScalarError(cannot_unmarshal(node, "string"))
    tag, value = resolve(node)
    if tag == "!!null":
        return None
    return str(value) if explicit_tag(node) == "!!binary" else str(node.value)


def to_bool(node: yaml.Node) -> bool | None:
    """A Go ``*bool`` field: true/false, or a 1.1 spelling (even quoted, as go-yaml does)."""
    if not isinstance(node, yaml.ScalarNode):
        raise ScalarError(cannot_unmarshal(node, "bool"))
    tag, value = resolve(node)
    if tag == "!!null":
        return None
    if tag == "!!bool":
        return bool(value)
    if tag == "!!str":
        if value in LEGACY_TRUE:
            return True
        if value in LEGACY_FALSE:
            return False
    raise ScalarError(cannot_unmarshal(node, "bool"))


def to_int(node: yaml.Node) -> int | None:
    """A Go ``*int`` field: decimal, 0x/0o/0b, legacy 0644 octal; floats truncate like go-yaml."""
    if not isinstance(node, yaml.ScalarNode):
        raise ScalarError(cannot_unmarshal(node, "int"))
    tag, value = resolve(node)
    if tag == "!!null":
        return None
    if tag == "!!int" and isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX:
        return value
    if tag == "!!float" and isinstance(value, float) and math.isfinite(value) and abs(value) < 2.0**63:
        return int(value)
    raise ScalarError(cannot_unmarshal(node, "int"))
