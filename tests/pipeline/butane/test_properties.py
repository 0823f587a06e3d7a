"""Property tests: the data-URL encoder and go-yaml v3 scalar rules."""

from __future__ import annotations

import base64
import gzip
import json
import urllib.parse

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from builds.pipeline.butane import yamlscalars as ys
from builds.pipeline.butane.dataurl import decode_data_url, escape, make_data_url
from builds.pipeline.butane.ignition import to_json
from builds.pipeline.butane.transpile import transpile

UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()")
payloads = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.text(alphabet="ab \n", max_size=2000).map(str.encode),  # compressible
)


@settings(max_examples=300, deadline=None)
@given(payloads)
def test_data_url_round_trips(data: bytes) -> None:
    encoded = make_data_url(data)
    payload = decode_data_url(encoded.url)
    if encoded.compression == "gzip":
        payload = gzip.decompress(payload)
    assert payload == data
    assert encoded.compression in ("", "gzip")


@settings(max_examples=300, deadline=None)
@given(payloads)
def test_data_url_picks_the_shortest(data: bytes) -> None:
    opaque = "data:," + escape(data)
    b64 = "data:;base64," + base64.b64encode(data).decode()
    plain_best = b64 if len(b64) < len(opaque) else opaque
    encoded = make_data_url(data)
    if encoded.compression == "gzip":
        assert len(encoded.url) + len("gzip") < len(plain_best)
    else:
        assert encoded.url == plain_best
        gz = "data:;base64," + base64.b64encode(gzip.compress(data, 9, mtime=0)).decode()
        assert len(gz) + len("gzip") >= len(plain_best)
    if not data:
        assert encoded.url == "data:,"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["gzip", "xz"]))
def test_user_compression_is_never_applied_twice(data: bytes, compression: str) -> None:
    encoded = make_data_url(data, compression)
    assert encoded.compression is None
    assert decode_data_url(encoded.url) == data


@given(st.binary(max_size=200))
def test_escape_keeps_only_unreserved_and_reverses(data: bytes) -> None:
    text = escape(data)
    assert set(text.replace("%", "")) <= UNRESERVED | set("0123456789ABCDEF")
    assert urllib.parse.unquote_to_bytes(text) == data


def scalar(text: str) -> yaml.Node:
    root = ys.compose(f"key: {text}\n")
    assert isinstance(root, yaml.MappingNode)
    value: yaml.Node = root.value[0][1]
    return value


@given(st.integers(min_value=0, max_value=2**40))
def test_int_fields_take_go_integer_syntaxes(value: int) -> None:
    assert ys.to_int(scalar(str(value))) == value
    assert ys.to_int(scalar(f"0o{value:o}")) == value
    assert ys.to_int(scalar(f"0x{value:x}")) == value
    assert ys.to_int(scalar(f"0b{value:b}")) == value
    if value:
        assert ys.to_int(scalar(f"0{value:o}")) == value  # legacy octal, as go-yaml v3 still reads it
    with pytest.raises(ys.ScalarError, match=r"cannot unmarshal !!str `.*` into int"):
        ys.to_int(scalar(f'"{value}"'))


@given(st.integers(min_value=0, max_value=99999).map(str).filter(lambda s: any(c in "89" for c in s)))
def test_leading_zero_with_8_or_9_is_decimal(digits: str) -> None:
    assert ys.to_int(scalar("0" + digits)) == int(digits)


@given(st.sampled_from(sorted(ys.TRUE_VALUES | ys.LEGACY_TRUE)), st.booleans())
def test_bool_spellings_true(text: str, quote: bool) -> None:
    node = scalar(f'"{text}"' if quote else text)
    if quote and text in ys.TRUE_VALUES:
        with pytest.raises(ys.ScalarError):
            ys.to_bool(node)
    else:
        assert ys.to_bool(node) is True


@given(st.sampled_from(sorted(ys.FALSE_VALUES | ys.LEGACY_FALSE)))
def test_bool_spellings_false(text: str) -> None:
    assert ys.to_bool(scalar(text)) is False


@given(st.sampled_from(["1", "0", "2", "yes please", "tru", "0x1"]))
def test_bool_fields_refuse_other_scalars(text: str) -> None:
    with pytest.raises(ys.ScalarError, match="into bool"):
        ys.to_bool(scalar(text))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40))
def test_string_fields_keep_the_source_text(text: str) -> None:
    # Plain when YAML allows it, double-quoted otherwise: either way a string field gets the text.
    quoted = json.dumps(text, ensure_ascii=False)
    assert ys.to_str(scalar(quoted)) == text
    try:
        node = scalar(text)
    except ys.YAMLSyntaxError:
        return
    if isinstance(node, yaml.ScalarNode) and ys.is_plain(node) and node.value not in ys.NULL_VALUES:
        assert ys.to_str(node) == node.value


@pytest.mark.parametrize("text", ["yes", "on", "0123", "0x10", "1.0", "2001-01-01", "true", "1e3", ".inf"])
def test_string_look_alikes_stay_strings_end_to_end(text: str) -> None:
    doc = "variant: flatcar\nversion: 1.1.0\nstorage:\n  files:\n    - path: /f\n      contents:\n"
    doc += f"        inline: {text}\n"
    result = transpile(doc)
    assert result.config is not None
    source = result.config["storage"]["files"][0]["contents"]["source"]
    assert decode_data_url(source) == text.encode()


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=50))
def test_json_escapes_html_and_line_separators_like_go(text: str) -> None:
    encoded = to_json({"v": text})
    assert not any(ch in encoded for ch in "<>&\u2028\u2029")
    assert json.loads(encoded)["v"] == text.encode("utf-8", "replace").decode("utf-8")


@settings(max_examples=100, deadline=None)
@given(
    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Co")), max_size=120),
    st.sampled_from([0o644, 0o600, 0o640, 0o755, 0o700, 0o444]),
)
def test_rendered_fragment_text_survives_emission(text: str, mode: int) -> None:
    from builds.pipeline.butane.render import FlavourConfig, render_butane

    fragment = yaml.safe_dump(
        {"storage": {"files": [{"path": "/etc/x", "mode": mode, "contents": {"inline": text}}]}}
    )
    result = transpile(render_butane(FlavourConfig(arch="x86-64", fragment=fragment)))
    assert result.config is not None, [str(m) for m in result.messages]
    file = result.config["storage"]["files"][0]
    payload = decode_data_url(file["contents"]["source"])
    if file["contents"]["compression"] == "gzip":
        payload = gzip.decompress(payload)
    assert payload == text.encode()
    assert file["mode"] == mode


_KEYS = st.sampled_from(
    "storage files directories links trees systemd units dropins passwd users groups path mode contents "
    "inline source local verification hash compression http_headers name value target hard overwrite user "
    "group id enabled mask contents_local ssh_authorized_keys uid gid kernel_arguments should_exist "
    "ignition config merge replace luks clevis disks append unknown".split()
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(
        ["/etc/a", "/etc/a/", "a.service", "x.conf", "0644", "yes", "data:,x", "https://h/x", "sha512-0"]
    ),
)
_TREES = st.recursive(
    _SCALARS,
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(_KEYS, c, max_size=4)),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_KEYS, _TREES, max_size=4))
def test_hostile_documents_get_a_report_never_an_exception(document: dict[str, object]) -> None:
    body = yaml.safe_dump(document)
    result = transpile("variant: flatcar\nversion: 1.1.0\n" + body)
    if result.ok:
        assert json.loads(result.json()) == result.config
    else:
        assert result.error
        assert result.config is None
    assert all(m.kind in ("error", "warning") for m in transpile(body).messages)
