"""Refusing webhook targets inside the network: loopback, private, link-local, metadata.

Checked when a subscription is created or changed and again before every
attempt, because what a name resolves to can change. Every address a name
resolves to must be public; one private answer is enough to refuse.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

# Cloud metadata endpoints beyond 169.254.169.254 (link-local already).
_METADATA = {
    ipaddress.ip_address("fd00:ec2::254"),  # AWS IPv6
    ipaddress.ip_address("100.100.100.200"),  # Alibaba
}


class TargetRefused(Exception):
    """The URL's host is (or resolves to) an address webhooks may not reach."""


def refused_reason(address: str) -> str:
    """Why `address` may not be a webhook target ("" when it may)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in _METADATA:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local (or metadata) address"
    if ip.is_private or ip.is_reserved or ip.is_multicast or ip.is_unspecified:
        return "a private or reserved address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("100.64.0.0/10"):
        return "a shared (carrier-grade NAT) address"
    return ""


async def check_target(url: str) -> None:
    """Raise TargetRefused unless every address of the URL's host is public."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise TargetRefused(f"host {host!r} does not resolve: {exc}") from exc
    for info in infos:
        address = str(info[4][0])
        reason = refused_reason(address)
        if reason:
            raise TargetRefused(
                f"host {host!r} resolves to {address}, {reason} "
                "(allowed only with --allow-private-webhooks)"
            )
