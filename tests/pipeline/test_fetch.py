"""Fetch: real HTTP against the fixture upstream on 127.0.0.1, real cache directory."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from builds.pipeline.egress import EgressRule
from builds.pipeline.errors import PipelineError
from builds.pipeline.fetch import Fetcher
from tests.upstream import UpstreamServer

PAYLOAD = b"wasmtime binary\n" * 1000
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
# The fixture upstream listens on 127.0.0.1: these tests opt in to private addresses explicitly
# (tests/pipeline/test_egress.py proves the default refuses them).
LOCAL = EgressRule(allow_private=True)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def fetcher(tmp_path: Path, sleeps: list[float]) -> Fetcher:
    # Backoff sleeps are recorded instead of slept: the tests check the schedule, not the clock.
    return Fetcher(
        tmp_path / "cache", egress=LOCAL, retries=3, backoff=0.5, sleep=sleeps.append, read_timeout=5
    )


def _cache_files(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "blobs").iterdir()) + sorted((cache / "tmp").iterdir())


def test_download_lands_in_content_addressed_cache(upstream: UpstreamServer, fetcher: Fetcher) -> None:
    url = upstream.add_bytes("/wasmtime.tar.xz", PAYLOAD)
    fetched = fetcher.fetch(url)
    assert fetched.sha256 == PAYLOAD_SHA
    assert fetched.size == len(PAYLOAD)
    assert fetched.path == fetcher.cache_dir / "blobs" / PAYLOAD_SHA
    assert fetched.path.read_bytes() == PAYLOAD
    assert fetched.url == fetched.final_url == url


def test_same_url_downloads_once(upstream: UpstreamServer, fetcher: Fetcher, tmp_path: Path) -> None:
    url = upstream.add_bytes("/a.tar.gz", PAYLOAD)
    first = fetcher.fetch(url)
    second = fetcher.fetch(url)
    assert upstream.hits("/a.tar.gz") == 1
    assert second.path == first.path
    # A new Fetcher on the same cache directory (another worker) reuses it too.
    again = Fetcher(fetcher.cache_dir, egress=LOCAL).fetch(url)
    assert again.sha256 == PAYLOAD_SHA
    assert upstream.hits("/a.tar.gz") == 1


def test_pinned_cache_hit_makes_no_request(upstream: UpstreamServer, fetcher: Fetcher) -> None:
    upstream.add_bytes("/v1/tool", PAYLOAD)
    fetcher.fetch(upstream.url("/v1/tool"))
    # A different URL (e.g. a mirror) for the same pinned content is served from the cache.
    upstream.add_bytes("/other/tool", PAYLOAD)
    fetched = fetcher.fetch(upstream.url("/other/tool"), sha256=PAYLOAD_SHA)
    assert fetched.sha256 == PAYLOAD_SHA
    assert upstream.hits("/other/tool") == 0


def test_pin_mismatch_is_refused_and_not_cached(upstream: UpstreamServer, fetcher: Fetcher) -> None:
    url = upstream.add_bytes("/wasmtime.tar.xz", PAYLOAD)
    wrong = "ab" * 32
    with pytest.raises(PipelineError) as caught:
        fetcher.fetch(url, sha256=wrong, label="wasmtime v31.0.0 x86-64")
    error = caught.value
    assert error.code == "fetch.sha256-mismatch"
    assert not error.retryable
    assert error.message.startswith(f"wasmtime v31.0.0 x86-64: {url} expected {wrong}, got {PAYLOAD_SHA}")
    assert _cache_files(fetcher.cache_dir) == []
    # Nothing was indexed either: an unpinned fetch asks the server again.
    fetcher.fetch(url)
    assert upstream.hits("/wasmtime.tar.xz") == 2


def test_uppercase_pin_is_accepted(upstream: UpstreamServer, fetcher: Fetcher) -> None:
    url = upstream.add_bytes("/x", PAYLOAD)
    assert fetcher.fetch(url, sha256=PAYLOAD_SHA.upper()).sha256 == PAYLOAD_SHA


def test_malformed_pin_is_rejected_before_any_request(upstream: UpstreamServer, fetcher: Fetcher) -> None:
    url = upstream.add_bytes("/x", PAYLOAD)
    with pytest.raises(PipelineError) as caught:
        fetcher.fetch(url, sha256="not-a-digest")
    assert caught.value.code == "fetch.invalid-pin"
    assert upstream.hits("/x") == 0


def test_retries_503_with_backoff_then_succeeds(
    upstream: UpstreamServer, fetcher: Fetcher, sleeps: list[float]
) -> None:
    url = upstream.add_flaky("/flaky", PAYLOAD, failures=2, status=503)
    fetched = fetcher.fetch(url)
    assert fetched.sha256 == PAYLOAD_SHA
    assert upstream.hits("/flaky") == 3
    assert sleeps == [0.5, 1.0]


def test_retry_after_header_is_respected(
    upstream: UpstreamServer, fetcher: Fetcher, sleeps: list[float]
) -> None:
    url = upstream.add_flaky("/busy", PAYLOAD, failures=1, status=429, headers={"Retry-After": "7"})
    fetcher.fetch(url)
    assert sleeps == [7.0]


def test_gives_up_after_retries_with_retryable_error(
    upstream: UpstreamServer, fetcher: Fetcher, sleeps: list[float]
) -> None:
    url = upstream.add_status("/down", 500)
    with pytest.raises(PipelineError) as caught:
        fetcher.fetch(url)
    assert caught.value.code == "fetch.http-error"
    assert caught.value.retryable
    assert "HTTP 500" in caught.value.message
    assert upstream.hits("/down") == 4  # first try + 3 retries
    assert sleeps == [0.5, 1.0, 2.0]
    assert _cache_files(fetcher.cache_dir) == []


@pytest.mark.parametrize("status", [404, 403, 410])
def test_client_errors_are_not_retried(
    upstream: UpstreamServer, fetcher: Fetcher, sleeps: list[float], status: int
) -> None:
    url = upstream.add_status("/missing", status)
    with pytest.raises(PipelineError) as caught:
        fetcher.fetch(url)
    assert caught.value.code == "fetch.http-error"
    assert not caught.value.retryable
    assert f"HTTP {status}" in caught.value.message
    assert upstream.hits("/missing") == 1
    assert sleeps == []


def test_connection_refused_is_retryable(tmp_path: Path, sleeps: list[float]) -> None:
    server = UpstreamServer().start()
    dead_url = server.url("/gone")
    server.stop()
    fetcher = Fetcher(tmp_path / "cache", egress=LOCAL, retries=2, backoff=0.1, sleep=sleeps.append)
    with pytest.raises(PipelineError) as caught:
        fetcher.fetch(dead_url)
    assert caught.value.code == "fetch.connection-error"
    assert caught.value.retryable
    assert len(sleeps) == 2


def test_read_timeout_is_retried_then_reported(
    upstream: UpstreamServer, tmp_path: Path, sleeps: list[float]
) -> None:
    url = upstream.add_slow("/slow", PAYLOAD, delay=3)
    fetcher = Fetcher(
        tmp_path / "cache", egress=LOCAL, read_timeout=0.2, retries=1, backoff=0, sleep=sleeps.append
    )
    with pytest.raises(PipelineError) as caught:
        fetcher.fetch(url)
    assert caught.value.code in {"fetch.timeout", "fetch.connection-error"}
    assert caught.value.retryable
    assert upstream.hits("/slow") == 2


def test_stall_mid_body_is_a_retryable_error(upstream: UpstreamServer, tmp_path: Path) -> None:
    url = upstream.add_slow("/stall", PAYLOAD, delay=3, before_headers=False)
    fetcher = Fetcher(tmp_path / "cache", egress=LOCAL, read_timeout=0.2, retries=0)
    with pytest.raises(PipelineError) as caught:
        fetcher.fetch(url)
    assert caught.value.retryable
    assert _cache_files(fetcher.cache_dir) == []


def test_redirects_are_followed(upstream: UpstreamServer, fetcher: Fetcher) -> None:
    final = upstream.add_bytes("/objects/blob", PAYLOAD)
    url = upstream.add_redirect_chain("/releases/download/v1/tool", "/objects/blob", hops=3)
    fetched = fetcher.fetch(url)
    assert fetched.sha256 == PAYLOAD_SHA
    assert fetched.url == url
    assert fetched.final_url == final


def test_redirect_limit(upstream: UpstreamServer, tmp_path: Path) -> None:
    upstream.add_bytes("/blob", PAYLOAD)
    url = upstream.add_redirect_chain("/loop", "/blob", hops=4)
    fetcher = Fetcher(tmp_path / "cache", egress=LOCAL, max_redirects=3)
    with pytest.raises(PipelineError) as caught:
        fetcher.fetch(url)
    assert caught.value.code == "fetch.too-many-redirects"
    assert upstream.hits("/blob") == 0
    # One more allowed hop and it works.
    assert Fetcher(tmp_path / "cache2", egress=LOCAL, max_redirects=4).fetch(url).sha256 == PAYLOAD_SHA


def test_redirect_to_file_url_is_refused(upstream: UpstreamServer, fetcher: Fetcher) -> None:
    url = upstream.add_redirect("/sneaky", "file:///etc/passwd")
    with pytest.raises(PipelineError) as caught:
        fetcher.fetch(url)
    assert caught.value.code == "fetch.bad-redirect"


def test_size_cap_from_content_length(upstream: UpstreamServer, tmp_path: Path) -> None:
    url = upstream.add_stream("/huge", 10 * 1024 * 1024)
    fetcher = Fetcher(tmp_path / "cache", egress=LOCAL, max_bytes=1024 * 1024)
    with pytest.raises(PipelineError) as caught:
        fetcher.fetch(url, label="k3s v1.31.0 x86-64")
    assert caught.value.code == "fetch.too-large"
    assert not caught.value.retryable
    assert caught.value.message.startswith("k3s v1.31.0 x86-64: ")
    assert _cache_files(fetcher.cache_dir) == []


def test_size_cap_while_streaming(upstream: UpstreamServer, tmp_path: Path) -> None:
    # Without Content-Length only counting the bytes as they arrive catches an oversized body.
    url = upstream.add_stream("/bomb", 5 * 1024 * 1024, send_length=False)
    fetcher = Fetcher(tmp_path / "cache", egress=LOCAL, max_bytes=1024 * 1024, retries=0)
    with pytest.raises(PipelineError) as caught:
        fetcher.fetch(url)
    assert caught.value.code == "fetch.too-large"
    assert _cache_files(fetcher.cache_dir) == []


def test_truncated_body_is_not_cached(upstream: UpstreamServer, tmp_path: Path) -> None:
    url = upstream.add_lying_length("/short", b"x" * 100, declared=10_000)
    fetcher = Fetcher(tmp_path / "cache", egress=LOCAL, retries=1, backoff=0)
    with pytest.raises(PipelineError) as caught:
        fetcher.fetch(url)
    assert caught.value.code == "fetch.connection-error"
    assert caught.value.retryable
    assert upstream.hits("/short") == 2
    assert _cache_files(fetcher.cache_dir) == []


def test_large_body_streams_through(upstream: UpstreamServer, fetcher: Fetcher) -> None:
    size = 20 * 1024 * 1024 + 17
    url = upstream.add_stream("/big", size, send_length=False, pattern=b"abc")
    fetched = fetcher.fetch(url)
    expected = hashlib.sha256((b"abc" * (64 * 1024 // 3 + 1))[: 64 * 1024] * (size // (64 * 1024)))
    expected.update((b"abc" * (64 * 1024 // 3 + 1))[: size % (64 * 1024)])
    assert fetched.size == size
    assert fetched.sha256 == expected.hexdigest()


def test_content_encoding_is_not_decoded(upstream: UpstreamServer, fetcher: Fetcher) -> None:
    # Some hosts label .tar.gz files "Content-Encoding: gzip"; the digest must be of the file.
    import gzip

    body = gzip.compress(PAYLOAD, mtime=0)
    url = upstream.add_bytes("/x.tar.gz", body, headers={"Content-Encoding": "gzip"})
    assert fetcher.fetch(url).sha256 == hashlib.sha256(body).hexdigest()


def test_mirror_rewrites_url_prefix(upstream: UpstreamServer, tmp_path: Path) -> None:
    upstream.add_bytes("/gh/bytecodealliance/wasmtime/v31/w.tar.xz", PAYLOAD)
    mirrors = {"https://github.com/": upstream.url("/gh/"), "https://github.com/other/": "http://never/"}
    fetcher = Fetcher(tmp_path / "cache", mirrors=mirrors, retries=0)  # mirrors may be private
    original = "https://github.com/bytecodealliance/wasmtime/v31/w.tar.xz"
    assert fetcher.rewrite_url(original) == upstream.url("/gh/bytecodealliance/wasmtime/v31/w.tar.xz")
    # Longest prefix wins.
    assert fetcher.rewrite_url("https://github.com/other/x") == "http://never/x"
    assert fetcher.rewrite_url("https://example.com/x") == "https://example.com/x"
    fetched = fetcher.fetch(original)
    assert fetched.url == original
    assert fetched.final_url == upstream.url("/gh/bytecodealliance/wasmtime/v31/w.tar.xz")
    assert fetched.sha256 == PAYLOAD_SHA


def test_mirror_applies_to_redirect_targets(upstream: UpstreamServer, tmp_path: Path) -> None:
    upstream.add_bytes("/objects/blob", PAYLOAD)
    upstream.add_redirect("/gh/release", "https://objects.example.com/blob")
    mirrors = {
        "https://github.com/": upstream.url("/gh/"),
        "https://objects.example.com/": upstream.url("/objects/"),
    }
    fetcher = Fetcher(tmp_path / "cache", mirrors=mirrors, retries=0)  # mirrors may be private
    assert fetcher.fetch("https://github.com/release").sha256 == PAYLOAD_SHA


def test_file_urls(tmp_path: Path) -> None:
    fetcher = Fetcher(tmp_path / "cache", file_roots=[tmp_path])
    source = tmp_path / "local tool.bin"
    source.write_bytes(PAYLOAD)
    fetched = fetcher.fetch(source.as_uri(), sha256=PAYLOAD_SHA)
    assert fetched.path.read_bytes() == PAYLOAD
    assert fetched.path != source
    with pytest.raises(PipelineError) as caught:
        fetcher.fetch((tmp_path / "nope").as_uri())
    assert caught.value.code == "fetch.file-error"
    # Local files are re-read (they may change), then verified like any download.
    source.write_bytes(b"changed")
    with pytest.raises(PipelineError) as caught:
        Fetcher(tmp_path / "fresh", file_roots=[tmp_path]).fetch(source.as_uri(), sha256=PAYLOAD_SHA)
    assert caught.value.code == "fetch.sha256-mismatch"


@pytest.mark.reliability
def test_a_pin_never_serves_a_local_file_to_another_fetch(upstream: UpstreamServer, tmp_path: Path) -> None:
    """A private upload's digest is no key to its bytes: a download pinned to it asks upstream."""
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    secret = uploads / "team-a.tar.gz"
    secret.write_bytes(PAYLOAD)
    Fetcher(tmp_path / "cache", file_roots=[uploads]).fetch(secret.as_uri(), sha256=PAYLOAD_SHA)

    other_team = Fetcher(tmp_path / "cache", egress=LOCAL, retries=0)
    upstream.add_bytes("/team-b/tool", b"what upstream really serves")
    with pytest.raises(PipelineError) as caught:
        other_team.fetch(upstream.url("/team-b/tool"), sha256=PAYLOAD_SHA)
    assert caught.value.code == "fetch.sha256-mismatch"
    assert upstream.hits("/team-b/tool") == 1


def test_unsupported_scheme(fetcher: Fetcher) -> None:
    with pytest.raises(PipelineError) as caught:
        fetcher.fetch("ftp://example.com/x")
    assert caught.value.code == "fetch.unsupported-url"


def test_hash_url(upstream: UpstreamServer, fetcher: Fetcher) -> None:
    url = upstream.add_bytes("/release.tar.gz", PAYLOAD)
    assert fetcher.hash_url(url) == (PAYLOAD_SHA, len(PAYLOAD))


@pytest.mark.parametrize("url", ["http://exa mple.org/x", "http://127.0.0.1:99999/x", "http:///x"])
def test_malformed_urls_fail_at_once_and_are_not_retryable(
    tmp_path: Path, sleeps: list[float], url: str
) -> None:
    fetcher = Fetcher(tmp_path / "cache", egress=LOCAL, retries=3, backoff=0.1, sleep=sleeps.append)
    with pytest.raises(PipelineError) as caught:
        fetcher.fetch(url, label="hello v1 x86-64")
    assert caught.value.code == "fetch.invalid-url"
    assert not caught.value.retryable
    assert caught.value.message.startswith("hello v1 x86-64: ") and "mirror" in caught.value.message
    assert sleeps == []


@pytest.fixture
def untrusted_tls_server(tmp_path: Path) -> Iterator[str]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate nobody trusts."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed, so no self-signed certificate can be made")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_port}/wasmtime.tar.xz"
    finally:
        server.shutdown()
        server.server_close()


def test_untrusted_certificate_fails_at_once_and_is_not_retryable(
    untrusted_tls_server: str, fetcher: Fetcher, sleeps: list[float]
) -> None:
    with pytest.raises(PipelineError) as caught:
        fetcher.fetch(untrusted_tls_server, label="wasmtime v31 x86-64")
    assert caught.value.code == "fetch.tls-error"
    assert not caught.value.retryable
    assert "self-signed certificate" in caught.value.message
    assert caught.value.message.startswith("wasmtime v31 x86-64: ")
    assert sleeps == []


def test_a_cache_directory_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a directory\n")
    with pytest.raises(PipelineError) as caught:
        Fetcher(blocker / "cache")
    assert caught.value.code == "fetch.cache-unwritable"
    assert str(blocker / "cache") in caught.value.message and "--cache-dir" in caught.value.message
