"""Egress: the fetcher reaches public addresses only, at the address it checked, at every hop.

Hostile-input tests (issue 10, holes 1 and 2). Real listeners on loopback addresses count every
connection they accept, so "refused" means no connection was even opened. DNS is replaced by an
injected resolver (no socket patching); 127.0.0.2 stands in for a public host by being listed in
the rule's ``allowed_networks``, so nothing here touches the internet.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from builds.pipeline.egress import EgressRule, address_problem
from builds.pipeline.errors import PipelineError
from builds.pipeline.fetch import Fetcher

pytestmark = pytest.mark.reliability

BODY = b"upstream bytes\n" * 100
BODY_SHA = hashlib.sha256(BODY).hexdigest()
STAND_IN_PUBLIC = (ipaddress.ip_network("127.0.0.2/32"),)


class Listener:
    """An HTTP server on ``host`` that records every accepted connection and request."""

    def __init__(self, host: str, port: int = 0, redirect: str | None = None) -> None:
        listener = self
        self.connections = 0
        self.requests: list[tuple[str, str]] = []  # (path, Host header)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                listener.requests.append((self.path, self.headers.get("Host", "")))
                if redirect is not None:
                    self.send_response(302)
                    self.send_header("Location", redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                self.wfile.write(BODY)

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request: object, client_address: object) -> bool:
                listener.connections += 1
                return True

        self.server = Server((host, port), Handler)
        self.host = host
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02})
        self.thread.daemon = True
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def secret_service() -> Iterator[Listener]:
    """Something internal on loopback (think 127.0.0.1:5432 or the metadata service)."""
    listener = Listener("127.0.0.1")
    yield listener
    listener.close()


@pytest.fixture
def twin_listeners() -> Iterator[tuple[Listener, Listener]]:
    """A stand-in public host on 127.0.0.2 and an internal service on 127.0.0.1, same port."""
    for _ in range(20):
        public = Listener("127.0.0.2")
        try:
            internal = Listener("127.0.0.1", public.port)
        except OSError:
            public.close()
            continue
        yield public, internal
        public.close()
        internal.close()
        return
    pytest.skip("no port free on both 127.0.0.1 and 127.0.0.2")


def _fetcher(tmp_path: Path, sleeps: list[float], **kwargs: object) -> Fetcher:
    return Fetcher(tmp_path / "cache", retries=3, backoff=0.1, sleep=sleeps.append, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "::ffff:169.254.169.254",
        "::ffff:127.0.0.1",
        "::127.0.0.1",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b:1::a00:1",  # local-use NAT64
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "2002:0a00:0001::",  # 6to4 of 10.0.0.1
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "ff02::1",
        "2001:db8::1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "1.1.1.1", "2606:4700::1111", "64:ff9b::5db8:d822", "2002:5db8:d822::1"]
)
def test_public_addresses_and_their_nat64_and_6to4_forms_pass(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.1:{port}/secret",
        "http://[::ffff:127.0.0.1]:{port}/secret",
        "http://localhost:{port}/secret",
        "http://internal.example:{port}/secret",  # resolves to 127.0.0.1 below
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
    ],
)
def test_fetch_of_an_internal_address_is_refused_without_connecting(
    tmp_path: Path, secret_service: Listener, template: str
) -> None:
    def resolver(host: str, port: int) -> list[str]:
        return {"localhost": ["127.0.0.1", "::1"], "internal.example": ["127.0.0.1"]}[host]

    sleeps: list[float] = []
    fetcher = _fetcher(tmp_path, sleeps, egress=EgressRule(resolver=resolver))
    url = template.format(port=secret_service.port)
    with pytest.raises(PipelineError) as caught:
        fetcher.fetch(url, label="evil v1 x86-64")
    error = caught.value
    assert error.code == "fetch.refused-address"
    assert not error.retryable and sleeps == []
    assert error.message.startswith("evil v1 x86-64: ")
    assert f"the host {urllib.parse.urlsplit(url).hostname} is " in error.message  # names host and address
    assert secret_service.connections == 0
    assert list((tmp_path / "cache" / "blobs").iterdir()) == []


def test_a_resolver_mixing_public_and_private_answers_is_refused(
    tmp_path: Path, twin_listeners: tuple[Listener, Listener]
) -> None:
    public, internal = twin_listeners
    rule = EgressRule(
        allowed_networks=STAND_IN_PUBLIC, resolver=lambda host, port: ["127.0.0.2", "127.0.0.1"]
    )
    with pytest.raises(PipelineError) as caught:
        _fetcher(tmp_path, [], egress=rule).fetch(f"http://mixed.example:{public.port}/f")
    assert caught.value.code == "fetch.refused-address"
    assert "mixed.example is 127.0.0.1" in caught.value.message
    assert public.connections == internal.connections == 0


def test_dns_rebinding_connects_only_to_the_checked_address(
    tmp_path: Path, twin_listeners: tuple[Listener, Listener]
) -> None:
    public, internal = twin_listeners
    answers = iter([["127.0.0.2"], ["127.0.0.1"], ["127.0.0.1"], ["127.0.0.1"]])
    lookups: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        lookups.append(host)
        return next(answers)

    rule = EgressRule(allowed_networks=STAND_IN_PUBLIC, resolver=rebinding)
    fetched = _fetcher(tmp_path, [], egress=rule).fetch(f"http://rebind.example:{public.port}/tool")
    assert fetched.sha256 == BODY_SHA
    assert lookups == ["rebind.example"]  # one lookup; the client never asked DNS again
    assert public.requests == [("/tool", f"rebind.example:{public.port}")]
    assert internal.connections == 0


def test_redirect_to_an_internal_address_is_refused_at_the_hop(
    tmp_path: Path, secret_service: Listener
) -> None:
    hop = Listener("127.0.0.2", redirect=f"http://127.0.0.1:{secret_service.port}/secret")
    try:
        rule = EgressRule(allowed_networks=STAND_IN_PUBLIC, resolver=lambda host, port: ["127.0.0.2"])
        sleeps: list[float] = []
        with pytest.raises(PipelineError) as caught:
            _fetcher(tmp_path, sleeps, egress=rule).fetch(f"http://downloads.example:{hop.port}/v1/tool")
        assert caught.value.code == "fetch.refused-address"
        assert "127.0.0.1" in caught.value.message and "loopback" in caught.value.message
        assert hop.requests == [("/v1/tool", f"downloads.example:{hop.port}")]
        assert secret_service.connections == 0 and sleeps == []
    finally:
        hop.close()


def test_redirect_through_a_name_is_checked_again(tmp_path: Path, secret_service: Listener) -> None:
    hop = Listener("127.0.0.2", redirect=f"http://metadata.example:{secret_service.port}/secret")
    try:
        names = {"downloads.example": ["127.0.0.2"], "metadata.example": ["127.0.0.1"]}
        rule = EgressRule(allowed_networks=STAND_IN_PUBLIC, resolver=lambda host, port: names[host])
        with pytest.raises(PipelineError) as caught:
            _fetcher(tmp_path, [], egress=rule).fetch(f"http://downloads.example:{hop.port}/v1/tool")
        assert caught.value.code == "fetch.refused-address"
        assert "metadata.example is 127.0.0.1" in caught.value.message
        assert secret_service.connections == 0
    finally:
        hop.close()


def test_configured_mirrors_may_be_private_but_their_redirects_are_checked(
    tmp_path: Path, twin_listeners: tuple[Listener, Listener]
) -> None:
    stand_in, internal = twin_listeners
    mirror = Listener("127.0.0.1")
    bouncing = Listener("127.0.0.1", redirect=f"http://127.0.0.2:{stand_in.port}/elsewhere")
    try:
        mirrors = {
            "https://github.com/": f"http://127.0.0.1:{mirror.port}/gh/",
            "https://objects.example.com/": f"http://127.0.0.1:{bouncing.port}/",
        }
        fetcher = _fetcher(tmp_path, [], mirrors=mirrors)  # the default rule: public only
        assert fetcher.fetch("https://github.com/org/tool/v1/tool").sha256 == BODY_SHA
        assert mirror.requests[0][0] == "/gh/org/tool/v1/tool"
        # The mirror is trusted; where it redirects to (outside any mirror) is not.
        with pytest.raises(PipelineError) as caught:
            fetcher.fetch("https://objects.example.com/blob")
        assert caught.value.code == "fetch.refused-address"
        assert stand_in.connections == internal.connections == 0
    finally:
        mirror.close()
        bouncing.close()


# -- file:// ---------------------------------------------------------------------------------


@pytest.fixture
def var_dir(tmp_path: Path) -> Path:
    """A var dir laid out like the portal's: a signing key, and uploads under the cache."""
    var = tmp_path / "var"
    (var / "signing").mkdir(parents=True)
    (var / "signing" / "signing-key.asc").write_text("-----BEGIN PGP PRIVATE KEY BLOCK-----\n")
    (var / "secret_key").write_text("django-secret\n")
    uploads = var / "cache" / "uploads" / "team" / "tool"
    uploads.mkdir(parents=True)
    (uploads / "1.0.tar.gz").write_bytes(BODY)
    return var


@pytest.mark.parametrize(
    "path", ["signing/signing-key.asc", "secret_key", "/proc/self/environ", "/etc/passwd"]
)
def test_file_urls_are_refused_without_allowed_roots(tmp_path: Path, var_dir: Path, path: str) -> None:
    target = Path(path) if path.startswith("/") else var_dir / path
    fetcher = Fetcher(var_dir / "cache")
    with pytest.raises(PipelineError) as caught:
        fetcher.fetch(target.as_uri(), label="evil v1 x86-64")
    assert caught.value.code == "fetch.file-refused"
    assert not caught.value.retryable
    assert list((var_dir / "cache" / "blobs").iterdir()) == []


def test_file_urls_stay_inside_the_allowed_root(tmp_path: Path, var_dir: Path) -> None:
    root = var_dir / "cache" / "uploads" / "team" / "tool"
    fetcher = Fetcher(var_dir / "cache", file_roots=[root])
    assert fetcher.fetch((root / "1.0.tar.gz").as_uri()).sha256 == BODY_SHA
    key = var_dir / "signing" / "signing-key.asc"
    escapes = [
        f"file://{root}/../../../../signing/signing-key.asc",
        f"file://{root}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/signing/signing-key.asc",
    ]
    (root / "2.0.tar.gz").symlink_to(key)  # a symlink planted inside the root
    escapes.append((root / "2.0.tar.gz").as_uri())
    for url in escapes:
        with pytest.raises(PipelineError) as caught:
            fetcher.fetch(url)
        assert caught.value.code == "fetch.file-refused", url
        assert str(key) in caught.value.message


def test_a_pinned_cache_hit_does_not_bypass_the_file_rule(tmp_path: Path, var_dir: Path) -> None:
    root = var_dir / "cache" / "uploads" / "team" / "tool"
    Fetcher(var_dir / "cache", file_roots=[root]).fetch((root / "1.0.tar.gz").as_uri())
    os.link(root / "1.0.tar.gz", var_dir / "copy.tar.gz")
    with pytest.raises(PipelineError) as caught:
        Fetcher(var_dir / "cache").fetch((var_dir / "copy.tar.gz").as_uri(), sha256=BODY_SHA)
    assert caught.value.code == "fetch.file-refused"


# -- TLS at a pinned address -------------------------------------------------------------------


@pytest.fixture
def tls_upstream(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """An HTTPS server on 127.0.0.2 whose certificate (from a test CA) names downloads.example."""
    import shutil
    import ssl
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60, cwd=tmp_path)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=Test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
        "-subj", "/CN=downloads.example")  # fmt: skip
    (tmp_path / "ext.cnf").write_text("subjectAltName=DNS:downloads.example\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "srv.pem", "-days", "1", "-extfile", "ext.cnf")  # fmt: skip
    listener = Listener("127.0.0.2")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "srv.pem", tmp_path / "srv.key")
    listener.server.socket = context.wrap_socket(listener.server.socket, server_side=True)
    try:
        yield listener.port, tmp_path / "ca.pem"
    finally:
        listener.close()


def test_https_at_the_pinned_address_still_verifies_the_host_name(
    tmp_path: Path, tls_upstream: tuple[int, Path]
) -> None:
    port, ca = tls_upstream
    names = {"downloads.example": ["127.0.0.2"], "impostor.example": ["127.0.0.2"]}
    rule = EgressRule(allowed_networks=STAND_IN_PUBLIC, resolver=lambda host, port: names[host])
    fetcher = Fetcher(tmp_path / "cache", egress=rule, retries=0)
    fetcher._session.verify = str(ca)  # trust the test CA (the system store stays the default)
    # Connected to 127.0.0.2, yet SNI and the certificate check use the name in the URL.
    assert fetcher.fetch(f"https://downloads.example:{port}/tool").sha256 == BODY_SHA
    with pytest.raises(PipelineError) as caught:
        fetcher.fetch(f"https://impostor.example:{port}/tool")
    assert caught.value.code == "fetch.tls-error"
    assert "impostor.example" in caught.value.message
