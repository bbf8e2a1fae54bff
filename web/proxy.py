"""The real client address behind trusted proxies (``NPS_TRUSTED_PROXIES``).

Behind a load balancer every request arrives from the balancer's address: a per-client rate
limit would then be one limit for every customer, and an email blast would lock them all out.
Proxies name the client in ``X-Forwarded-For``, each appending the address it received the
request from. Anyone can send that header, so it is read only when the connection comes from a
trusted proxy, and then from right to left, skipping trusted hops: the first address that is
not a trusted proxy is the client (entries further left were written by the client itself and
prove nothing).

``NPS_TRUSTED_PROXIES`` is a comma-separated list of IP addresses and networks
(``10.0.0.0/8, 2001:db8::/32``); empty by default, so no forwarded header is believed. When a
trusted hop forwards something that is not an IP address, the nearest trusted hop stays the
client (still limited, never unlimited).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from config.settings import SettingsError

__all__ = ["TrustedProxies", "parse_networks"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """IP addresses and networks; :class:`SettingsError` names a bad entry."""
    networks: list[IPNetwork] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise SettingsError(
                f"NPS_TRUSTED_PROXIES: {entry.strip()!r} is not an IP address or network"
            ) from None
    return tuple(networks)


def _address(value: str) -> IPAddress | None:
    """An address as proxies write it: bare, ``a.b.c.d:port`` or ``[v6]:port``."""
    value = value.strip()
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else value
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """ASGI middleware: ``scope["client"]`` becomes the real client behind trusted proxies."""

    def __init__(self, app: ASGIApp, trusted: Iterable[IPNetwork] = ()) -> None:
        self.app = app
        self.trusted = tuple(trusted)

    def _trusts(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in network for network in self.trusted)

    def client_for(self, peer: IPAddress, forwarded_for: list[str]) -> IPAddress:
        client = peer
        for entry in reversed(forwarded_for):
            if not self._trusts(client):
                break
            hop = _address(entry)
            if hop is None:
                break
            client = hop
        return client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.trusted:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        peer = _address(str(client[0])) if client else None
        if peer is not None and self._trusts(peer):
            forwarded = [
                item
                for name, value in scope.get("headers", [])
                if name == b"x-forwarded-for"
                for item in value.decode("latin-1").split(",")
            ]
            real = self.client_for(peer, forwarded)
            if real != peer:
                scope = dict(scope)
                scope["client"] = (str(real), 0)
        await self.app(scope, receive, send)
