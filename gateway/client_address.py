"""The client's address, believing `X-Forwarded-For` only when a configured proxy sent it.

Anyone can send an `X-Forwarded-For` header; believed from anyone, it lets one client pose as any
number of addresses and escape every per-address limit. So the header counts only when the
connection's peer lies in one of `trusted_proxies`, and then only as far as the chain of trusted
proxies reaches: reading right to left (each proxy appends the address it saw), the first address
that is not itself a trusted proxy is the client. This is what nginx's `real_ip_recursive` does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

UNKNOWN = "unknown"


class ClientAddresses:
    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self._trusted: tuple[Network, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in trusted_proxies)

    def of(self, scope: Scope) -> str:
        """The address per-address limits count for this request (the peer's when nothing is trusted)."""
        client = scope.get("client")
        peer = client[0] if client else UNKNOWN
        if not self._trusted or not self._is_trusted(_parse(peer)):
            return peer
        hops = _forwarded_for(scope)
        nearest = peer
        for hop in reversed(hops):
            address = _parse(hop)
            if address is None:
                # A trusted proxy appended garbage: the last address we could vouch for stands.
                return nearest
            if not self._is_trusted(address):
                return str(address)
            nearest = str(address)
        return nearest

    def _is_trusted(self, address: Address | None) -> bool:
        return address is not None and any(address in network for network in self._trusted)


def _forwarded_for(scope: Scope) -> list[str]:
    """Every hop of every X-Forwarded-For header, in order (proxies may add a header each)."""
    hops: list[str] = []
    for name, value in scope.get("headers") or ():
        if name == b"x-forwarded-for":
            hops += [hop.strip() for hop in value.decode("latin-1").split(",") if hop.strip()]
    return hops


def _parse(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # An IPv4 client seen through an IPv6 socket: count it as the IPv4 address it is.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
