"""Where the ``http_request`` tool may go (``PLANSMITH_HTTP_*``): the URL policy.

Pure code, no I/O: the worker resolves a host name, then asks :meth:`UrlPolicy.check`
about the name and every address it resolved to, and connects only to an address that was
checked (activities/http_guard.py). Each redirect hop is checked again.

The order of the rules:

1. ``PLANSMITH_HTTP_DENY`` (host names, ``*.example.com`` patterns, addresses, CIDRs):
   a host or any of its addresses on it is refused.
2. ``PLANSMITH_HTTP_ALLOW``, when set, is the only way out: the host name matches an entry,
   or every address lies in a network of it.
3. Addresses that are never a web service the tool should reach are refused unless an
   address or CIDR of ``PLANSMITH_HTTP_ALLOW`` names them (a host name there does not lift
   this: DNS of an allowed domain could point at the metadata service): link-local
   (169.254.0.0/16, fe80::/10, where the cloud metadata services live), the cloud metadata
   addresses (169.254.169.254, fd00:ec2::254, 100.100.100.200), "this network" (0.0.0.0/8,
   ::), multicast, and reserved/broadcast (240.0.0.0/4). Private networks (10/8, 172.16/12,
   192.168/16, 100.64/10, fc00::/7) are allowed unless ``PLANSMITH_HTTP_ALLOW_PRIVATE=false``;
   loopback (127/8, ::1) unless ``PLANSMITH_HTTP_ALLOW_LOOPBACK=false``.

An IPv6 address that carries an IPv4 one (``::ffff:169.254.169.254``, NAT64
``64:ff9b::a9fe:a9fe``, 6to4, IPv4-compatible ``::a9fe:a9fe``) is judged as both. Host
literals in the forms the C library accepts (``2852039166``, ``0251.0376.0251.0376``,
``0xa9fea9fe``, ``169.254.43518``) are read as the address they stand for.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_ADDRESSES: tuple[IPAddress, ...] = (
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, Oracle...
    ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
)


def _nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# Never reachable unless an address/CIDR of PLANSMITH_HTTP_ALLOW names it.
ALWAYS_DENIED: tuple[tuple[str, tuple[IPNetwork, ...]], ...] = (
    (
        "a link-local address (where cloud metadata services live)",
        _nets("169.254.0.0/16", "fe80::/10"),
    ),
    ("an unspecified ('this network') address", _nets("0.0.0.0/8", "::/128")),
    ("a multicast address", _nets("224.0.0.0/4", "ff00::/8")),
    ("a reserved or broadcast address", _nets("240.0.0.0/4")),
)
PRIVATE = _nets(
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "fec0::/10"
)
LOOPBACK = _nets("127.0.0.0/8", "::1/128")

NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NUMERIC_HOST = re.compile(r"^[0-9a-fA-FxX.]+$")
_NAME = re.compile(
    r"^(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$"
)


class HostDenied(ValueError):
    """The URL policy refuses a host; the message says which rule."""


def literal_address(host: str) -> IPAddress | None:
    """The address ``host`` spells, or None for a name to resolve.

    Accepts what the C library's resolver would take as a number without asking DNS:
    dotted IPv4 with decimal, octal or hex parts and fewer than four parts
    (``127.1``, ``2852039166``), IPv6 with or without brackets and a zone (``%eth0``).
    """
    name = host.strip().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    name = name.split("%", 1)[0]  # a zone id (%25eth0 in a URL, %eth0 decoded)
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        pass
    if _NUMERIC_HOST.match(name) and name.count(".") <= 3:
        try:
            return ipaddress.IPv4Address(socket.inet_aton(name))  # no lookup: parsing only
        except OSError:
            return None
    return None


def embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 one carries (mapped, NAT64, 6to4, Teredo, compatible)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address in NAT64 or (address in IPV4_COMPATIBLE and int(address) > 1):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def _views(address: IPAddress) -> list[IPAddress]:
    return [address, *embedded_ipv4(address)]


@dataclass(frozen=True)
class HostRules:
    """Host names (``example.com``, ``*.example.com``, ``*``) and networks."""

    names: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.names or self.networks)

    def matches_name(self, host: str) -> str | None:
        name = host.strip().strip("[]").lower().rstrip(".")
        for pattern in self.names:
            if pattern == "*" or pattern == name:
                return pattern
            if pattern.startswith("*.") and name.endswith(pattern[1:]):
                return pattern
        return None

    def network_of(self, address: IPAddress) -> IPNetwork | None:
        for view in _views(address):
            for net in self.networks:
                if view.version == net.version and view in net:
                    return net
        return None


def parse_host_rules(text: str | Iterable[str] | None, variable: str) -> HostRules:
    """``a.example.com, *.corp.example, 10.0.0.0/8, 127.0.0.2, ::1`` as :class:`HostRules`.

    Raises:
        ValueError: naming ``variable`` and the entry that is neither a host name nor an
            address or network.
    """
    entries = text.split(",") if isinstance(text, str) else list(text or [])
    names: list[str] = []
    networks: list[IPNetwork] = []
    for position, raw in enumerate(entries, start=1):
        entry = raw.strip()
        if not entry:
            continue
        bare = entry[1:].replace("]", "", 1) if entry.startswith("[") else entry
        try:
            networks.append(ipaddress.ip_network(bare, strict=False))
            continue
        except ValueError:
            pass
        literal = literal_address(entry)
        if literal is not None:
            networks.append(ipaddress.ip_network(literal))
            continue
        name = entry.lower().rstrip(".")
        if name == "*" or _NAME.match(name):
            names.append(name)
            continue
        shown = entry if len(entry) <= 60 else entry[:60] + "…"
        raise ValueError(
            f"{variable} entry {position} ({shown!r}) is neither a host name "
            "(example.com, *.example.com) nor an address or CIDR (10.0.0.0/8, ::1)"
        )
    return HostRules(tuple(names), tuple(networks))


@dataclass(frozen=True)
class UrlPolicy:
    """Which hosts and addresses ``http_request`` may connect to (see the module doc)."""

    allow: HostRules = field(default_factory=HostRules)
    deny: HostRules = field(default_factory=HostRules)
    allow_private: bool = True
    allow_loopback: bool = True

    def check_name(self, host: str) -> None:
        """Refuse a host name on the deny list, before it is resolved."""
        pattern = self.deny.matches_name(host)
        if pattern is not None:
            raise HostDenied(f"host {host!r} is denied (PLANSMITH_HTTP_DENY: {pattern!r})")

    def check(self, host: str, addresses: Sequence[IPAddress]) -> None:
        """Refuse (:class:`HostDenied`) unless ``host`` and every one of ``addresses``
        (what it resolved to) may be reached."""
        self.check_name(host)
        if not addresses:
            raise HostDenied(f"host {host!r} has no address")
        for address in addresses:
            net = self.deny.network_of(address)
            if net is not None:
                raise HostDenied(
                    f"host {host!r} resolves to {address}, which is denied "
                    f"(PLANSMITH_HTTP_DENY: {net})"
                )
        if self.allow:
            by_name = self.allow.matches_name(host) is not None
            if not by_name and not all(self.allow.network_of(a) for a in addresses):
                raise HostDenied(
                    f"host {host!r} ({', '.join(map(str, addresses))}) is not on the "
                    "allow list (PLANSMITH_HTTP_ALLOW)"
                )
        for address in addresses:
            reason = self.default_denial(address)
            if reason is not None:
                raise HostDenied(f"host {host!r} resolves to {address}, {reason}")

    def default_denial(self, address: IPAddress) -> str | None:
        """Why ``address`` is refused by the defaults, or None. An address or CIDR of the
        allow list lifts them."""
        if self.allow.network_of(address) is not None:
            return None
        for view in _views(address):
            if view in METADATA_ADDRESSES:
                return "a cloud metadata address: refused unless PLANSMITH_HTTP_ALLOW names it"
            for reason, nets in ALWAYS_DENIED:
                if _within(view, nets):
                    return f"{reason}: refused unless PLANSMITH_HTTP_ALLOW names it"
            if not self.allow_private and _within(view, PRIVATE):
                return "a private address: refused (PLANSMITH_HTTP_ALLOW_PRIVATE=false)"
            if not self.allow_loopback and _within(view, LOOPBACK):
                return "a loopback address: refused (PLANSMITH_HTTP_ALLOW_LOOPBACK=false)"
        return None


def _within(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address.version == n.version and address in n for n in networks)
