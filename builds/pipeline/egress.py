"""Egress: the one rule for where Bakehouse may open outgoing connections.

Upstream downloads and webhook deliveries go to URLs that teams write, so they are hostile
input: without a rule, a recipe source at ``http://169.254.169.254/`` or ``http://127.0.0.1:5432/``
makes the worker fetch cloud credentials or poke internal services and publish the answer.

The rule, applied at every connection (including every redirect hop):

1. Resolve the host once (the resolver is injectable, so tests need no DNS and no socket patching).
2. Refuse when ANY address is not public: loopback, private, link-local, CGNAT, unspecified,
   reserved, documentation, multicast, IPv4-compatible, Teredo, local-use NAT64, and the
   IPv4-mapped / NAT64 (``64:ff9b::/96``) / 6to4 (``2002::/16``) forms of such IPv4 addresses.
3. Connect to the exact address that was checked (no second DNS lookup, so a rebinding resolver
   that answers "public" then "private" gains nothing), while the Host header, TLS SNI and the
   certificate check still use the real host name.

Exceptions are explicit: ``allow_private`` (an operator's setting or CLI flag), ``allowed_networks``
(operator-listed networks), and destinations the caller marks ``trusted`` (URLs rewritten by a
configured mirror, which may live on an air-gapped site's private network). Trusted destinations
are still pinned to the address that was resolved.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from builds.pipeline.errors import PipelineError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses it resolves to, as text. Raise OSError when it does not resolve.
Resolver = Callable[[str, int], Sequence[str]]

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# Not reachable or not meant to be reached from the public internet. Listed explicitly rather than
# trusting ``is_global``, whose answers changed between Python patch releases.
_REFUSED_V4: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_V4("0.0.0.0/8"), "an unspecified ('this network') address"),
    (_V4("10.0.0.0/8"), "a private address"),
    (_V4("100.64.0.0/10"), "a carrier-grade NAT (shared) address"),
    (_V4("127.0.0.0/8"), "a loopback address"),
    (_V4("169.254.0.0/16"), "a link-local address (cloud metadata lives here)"),
    (_V4("172.16.0.0/12"), "a private address"),
    (_V4("192.0.0.0/24"), "an IETF protocol address"),
    (_V4("192.0.2.0/24"), "a documentation address"),
    (_V4("192.88.99.0/24"), "a 6to4 relay address"),
    (_V4("192.168.0.0/16"), "a private address"),
    (_V4("198.18.0.0/15"), "a benchmarking address"),
    (_V4("198.51.100.0/24"), "a documentation address"),
    (_V4("203.0.113.0/24"), "a documentation address"),
    (_V4("224.0.0.0/4"), "a multicast address"),
    (_V4("240.0.0.0/4"), "a reserved address"),
)
_REFUSED_V6: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_V6("::/128"), "the unspecified address"),
    (_V6("::1/128"), "a loopback address"),
    (_V6("::/96"), "an IPv4-compatible address (deprecated)"),
    (_V6("64:ff9b:1::/48"), "a local-use NAT64 address"),
    (_V6("100::/64"), "a discard-only address"),
    (_V6("2001::/32"), "a Teredo tunnel address"),
    (_V6("2001:2::/48"), "a benchmarking address"),
    (_V6("2001:10::/28"), "an ORCHID address"),
    (_V6("2001:db8::/32"), "a documentation address"),
    (_V6("3fff::/20"), "a documentation address"),
    (_V6("5f00::/16"), "a segment-routing address"),
    (_V6("fc00::/7"), "a private (unique local) address"),
    (_V6("fe80::/10"), "a link-local address"),
    (_V6("fec0::/10"), "a site-local address"),
    (_V6("ff00::/8"), "a multicast address"),
)
_NAT64 = _V6("64:ff9b::/96")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")
_SIX_TO_FOUR = _V6("2002::/16")


def embedded_ipv4(address: IPAddress) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4), and the form's name."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped, "IPv4-mapped"
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "NAT64"
    if address in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF), "6to4"
    return None


def address_problem(address: IPAddress) -> str | None:
    """Why ``address`` is not a public destination ("a loopback address"), or None when it is."""
    embedded = embedded_ipv4(address)
    if embedded is not None:
        inner, form = embedded
        problem = address_problem(inner)
        return f"the {form} form of {inner}, {problem}" if problem else None
    table: Iterable[tuple[IPNetwork, str]] = (
        _REFUSED_V4 if isinstance(address, ipaddress.IPv4Address) else _REFUSED_V6
    )
    for network, reason in table:
        if address in network:
            return reason
    if not address.is_global:  # belt and braces for whatever the tables above miss
        return "not a public address"
    return None


def _idna(host: str) -> str:
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6), via the system resolver."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class Destination:
    """A URL that passed the rule, and the one address to connect to for it."""

    url: str
    scheme: str
    host: str  # as in the URL, without brackets
    port: int
    address: str  # the checked address: connect here and nowhere else

    @property
    def pinned_url(self) -> str:
        """``url`` with its host replaced by the checked address (credentials dropped)."""
        parts = urllib.parse.urlsplit(self.url)
        literal = f"[{self.address}]" if ":" in self.address else self.address
        return urllib.parse.urlunsplit(
            (self.scheme, f"{literal}:{self.port}", parts.path or "/", parts.query, "")
        )

    @property
    def host_header(self) -> str:
        literal = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return literal if self.port == default else f"{literal}:{self.port}"


@dataclass(frozen=True)
class EgressRule:
    """Where outgoing http(s) connections may go (see the module docstring).

    ``area`` prefixes the error codes (``fetch.refused-address``, ``webhook.refused-address``).
    """

    area: str = "fetch"
    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()
    resolver: Resolver = field(default=system_resolver)
    # The end of a refusal: what the user can do about it.
    hint: str = "only public addresses are reached (configured mirrors excepted)"

    def check(self, url: str, *, trusted: bool = False, who: str = "") -> Destination:
        """Resolve ``url``'s host once and return where to connect, or raise PipelineError.

        ``{area}.refused-address`` (never retried) names the host and the refused address;
        ``{area}.unresolvable-host`` is retryable (DNS trouble may pass).
        """
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        try:
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise PipelineError(f"{self.area}.invalid-url", f"{who}{url} is not a valid URL ({exc})") from exc
        if scheme not in ("http", "https") or not host:
            raise PipelineError(f"{self.area}.invalid-url", f"{who}{url} is not an http(s) URL with a host")
        port = port or (443 if scheme == "https" else 80)
        try:
            literal: IPAddress | None = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        elif not _HOSTNAME_RE.match(_idna(host)):
            raise PipelineError(f"{self.area}.invalid-url", f"{who}{url} has an invalid host name {host!r}")
        else:
            try:
                answers = self.resolver(host, port)
                addresses = [ipaddress.ip_address(str(a).split("%", 1)[0]) for a in answers]
            except (OSError, UnicodeError, ValueError) as exc:
                raise PipelineError(
                    f"{self.area}.unresolvable-host",
                    f"{who}the host {host} of {url} does not resolve ({exc})",
                    retryable=True,
                ) from exc
            if not addresses:
                raise PipelineError(
                    f"{self.area}.unresolvable-host",
                    f"{who}the host {host} of {url} resolves to no address",
                    retryable=True,
                )
        if not trusted and not self.allow_private:
            # Every answer must be public: otherwise a resolver could mix in a private one and a
            # client that tries several (or a later lookup) might use it.
            for address in addresses:
                problem = self.problem(address)
                if problem is not None:
                    raise PipelineError(
                        f"{self.area}.refused-address",
                        f"{who}{url} was refused: the host {host} is {address}, {problem}; {self.hint}",
                    )
        return Destination(url=url, scheme=scheme, host=host, port=port, address=str(addresses[0]))

    def problem(self, address: IPAddress) -> str | None:
        if any(address.version == net.version and address in net for net in self.allowed_networks):
            return None
        return address_problem(address)


class PinnedAddressAdapter(HTTPAdapter):
    """Sends a request to the address its :class:`Destination` was checked at.

    The request URL carries the address (so urllib3 never resolves the name again); the Host
    header, SNI and certificate verification use the real host name, which travels on the
    prepared request as ``bakehouse_tls_host``.
    """

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: bool | str, cert: Any = None
    ) -> Any:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        kwargs: dict[str, Any] = dict(pool_kwargs)
        name = getattr(request, "bakehouse_tls_host", None)
        if host_params.get("scheme") == "https" and name:
            # SNI and the ssl module's own hostname check (a certificate error, as without pinning).
            kwargs["server_hostname"] = name
        return host_params, kwargs


def pinned_session(user_agent: str) -> requests.Session:
    """A session that only sends to checked destinations: see :func:`send_pinned`.

    Environment proxies and ``.netrc`` are ignored (``trust_env``): a proxy would do its own DNS
    lookup, and credentials must never be offered to hosts a team chose.
    """
    session = requests.Session()
    session.trust_env = False
    session.headers["User-Agent"] = user_agent
    adapter = PinnedAddressAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def send_pinned(
    session: requests.Session,
    method: str,
    destination: Destination,
    *,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    timeout: tuple[float, float],
    stream: bool = False,
) -> requests.Response:
    """Send one request to ``destination`` (never following redirects: check every hop first)."""
    all_headers = {**(headers or {}), "Host": destination.host_header}
    request = requests.Request(method, destination.pinned_url, headers=all_headers, data=data)
    prepared = session.prepare_request(request)
    prepared.bakehouse_tls_host = destination.host  # type: ignore[attr-defined]
    try:
        return session.send(prepared, stream=stream, allow_redirects=False, timeout=timeout)
    finally:
        session.cookies.clear()  # a host's cookies never travel to the next hop


__all__ = [
    "Destination",
    "EgressRule",
    "PinnedAddressAdapter",
    "Resolver",
    "address_problem",
    "embedded_ipv4",
    "pinned_session",
    "send_pinned",
    "system_resolver",
]
