"""The SSRF guard for webhook receivers: a receiver's URL must lead to a public address.

A URL is checked when an endpoint is created and again before every delivery. The second check
returns the addresses it approved, and the sender connects to one of those (sending the host
name as Host and SNI), so a name that resolves to a public address for the check and to a
private one a moment later (DNS rebinding) never gets a connection to the private one.

Names are resolved with `socket.getaddrinfo` on every call, never through the DNS cache in
hokusai_site/dns.py: a cached answer would be an answer the OS might no longer give. Resolving
also settles the host spellings the OS reads as IPv4 literals (`127.1`, `2130706433`,
`0x7f000001`, `0177.0.0.1`): we judge the address the OS would connect to, not the text.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import string
from dataclasses import dataclass
from urllib.parse import SplitResult, quote, urlsplit

from django.conf import settings

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}

# Letters, digits, '-' and '_' (some real DNS names have it), 1 to 63 per label, one optional
# trailing dot; anything else could not be sent as a Host header or an SNI name.
_HOST_NAME = re.compile(r"[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*\.?")

# RFC 1918 and unique-local: the ranges people mean by "private".
_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_SHARED_NETWORK = ipaddress.ip_network("100.64.0.0/10")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookUrlRefused(ValueError):
    """The URL may not be used for a receiver; str(exc) says why, in one sentence a user can act
    on."""


class ReceiverLookupFailed(OSError):
    """The receiver's host name did not resolve (a DNS failure, perhaps temporary)."""


@dataclass(frozen=True)
class Receiver:
    scheme: str  # "http" or "https"
    host: str  # lower-case, no brackets for IPv6, no trailing dot
    port: int  # explicit or the scheme's default
    target: str  # path and query as sent on the request line, "/" when empty; no fragment
    addresses: tuple[str, ...]  # resolved, every one allowed, in getaddrinfo order, no repeats

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def check_syntax(url: str) -> None:
    """Raises WebhookUrlRefused unless `url` is a well-formed http(s) URL with a host."""
    _split(url)


def receiver_for(url: str, *, allow_private: bool | None = None) -> Receiver:
    """Checks `url`, resolves its host now and returns where to connect. Refuses the URL if any
    address is not public: the sender may try any of them, so one private address is enough."""
    parts = _split(url)
    scheme = parts.scheme
    # The trailing dot only says the name is absolute; SNI must not carry it (RFC 6066).
    host = parts.hostname.removesuffix(".")
    port = parts.port or DEFAULT_PORTS[scheme]
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    # The request line must be ASCII: percent-encode anything else as UTF-8, as browsers do.
    target = quote(target, safe=string.punctuation)

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ReceiverLookupFailed(f"webhook URL host {host} did not resolve: {exc}") from exc
    addresses = tuple(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise ReceiverLookupFailed(f"webhook URL host {host} resolved to no addresses")

    if allow_private is None:
        allow_private = settings.HOKUSAI_WEBHOOK_ALLOW_PRIVATE
    if not allow_private:
        for address in addresses:
            reason = _why_not_public(address)
            if reason:
                verb = "is" if address == host else "resolves to"
                raise WebhookUrlRefused(
                    f"webhook URL host {host} {verb} {reason}; "
                    "receivers must be on public addresses"
                )
    return Receiver(scheme=scheme, host=host, port=port, target=target, addresses=addresses)


def address_allowed(address: str) -> bool:
    """True for a public unicast address, the only kind a receiver may be on."""
    return _why_not_public(address) is None


def _split(url: object) -> SplitResult:
    if not isinstance(url, str):
        raise WebhookUrlRefused("webhook URL must be a string")
    if not url:
        raise WebhookUrlRefused("webhook URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise WebhookUrlRefused(f"webhook URL is longer than {MAX_URL_LENGTH} characters")
    # urlsplit quietly drops some of these (tabs, newlines, edge spaces); refuse them instead,
    # so the URL we check is the URL the user sees.
    if any(char.isspace() or not char.isprintable() for char in url):
        raise WebhookUrlRefused("webhook URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise WebhookUrlRefused(f"webhook URL is malformed: {exc}") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise WebhookUrlRefused("webhook URL must start with http:// or https://")
    if "@" in parts.netloc:
        raise WebhookUrlRefused(
            "webhook URL may not contain a user name or password; use the endpoint's secret"
        )
    host = parts.hostname
    if not host:
        raise WebhookUrlRefused("webhook URL has no host")
    try:
        port = parts.port
    except ValueError:
        port = 0  # not a number, or beyond 65535: one message for every bad port
    if port is not None and not 1 <= port <= 65535:
        raise WebhookUrlRefused("webhook URL port must be a number from 1 to 65535")
    if "%" in host:
        raise WebhookUrlRefused(
            f"webhook URL host {host} may not contain '%' (percent-encoding or an IPv6 zone id)"
        )
    if parts.netloc.startswith("["):
        # urlsplit also lets through "IPvFuture" ([v1.x]), which nothing can connect to.
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise WebhookUrlRefused(f"webhook URL host [{host}] is not an IPv6 address") from None
    elif not host.isascii():
        raise WebhookUrlRefused(
            f"webhook URL host {host} is not ASCII; write the name in its xn-- (punycode) form"
        )
    elif not _HOST_NAME.fullmatch(host) or len(host) > 254:
        raise WebhookUrlRefused(f"webhook URL host {host} is not a valid host name")
    return parts


def _why_not_public(address: str) -> str | None:
    """None for a public unicast address; otherwise what it is, e.g. "10.0.0.1, a private
    address"."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return f"{address}, which is not an IP address"
    # An IPv4-mapped address is that IPv4 address on a dual-stack socket.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    # 6to4 and Teredo carry an IPv4 address a relay may deliver to; judge it before the wrapper,
    # so the message names what the wrapper hides.
    for inner in _embedded_ipv4(ip):
        if not _public(inner):
            return f"{address}, which carries {inner}, {_kind(inner)} address"
    if not _public(ip):
        return f"{address}, {_kind(ip)} address"
    return None


def _embedded_ipv4(ip: IPAddress) -> tuple[ipaddress.IPv4Address, ...]:
    if isinstance(ip, ipaddress.IPv4Address):
        return ()
    if ip.sixtofour:
        return (ip.sixtofour,)
    if ip.teredo:
        return ip.teredo  # (server, client)
    return ()


def _public(ip: IPAddress) -> bool:
    # is_global alone lets through multicast, and for IPv6 (Python 3.11) also reserved ranges
    # such as ::/8 (IPv4-compatible, NAT64's 64:ff9b::) and deprecated site-local fec0::/10.
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return False
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


def _kind(ip: IPAddress) -> str:
    """The category of a non-public address, with its article, for messages."""
    if ip.is_unspecified:
        return "an unspecified"
    if ip.is_loopback:
        return "a loopback"
    if ip.is_link_local:
        return "a link-local"
    if ip.is_multicast:
        return "a multicast"
    if any(ip in net for net in _PRIVATE_NETWORKS):
        return "a private"
    if ip in _SHARED_NETWORK:
        return "a shared (carrier-grade NAT)"
    if ip.is_reserved:
        return "a reserved"
    return "a special-purpose (non-public)"
