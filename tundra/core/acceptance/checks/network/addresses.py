"""Addresses and ports the network checks share (NX-01 … NX-03).

Loopback and wildcard tests for a host, ``HOST:PORT`` parsing, and the ports PostgreSQL and Valkey
use: their defaults plus the ports of the configured ``database_url``/``valkey_url``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from tundra.core.settings import Settings


#: Default ports of the services that must never be reachable from outside.
SERVICE_PORTS: Final[Mapping[int, str]] = {5432: "postgresql", 6379: "valkey"}
_WILDCARD_HOSTS: Final = frozenset({"", "*", "0.0.0.0", "::", "[::]"})  # noqa: S104 - names, not binds


def is_loopback(host: str) -> bool:
    """Loopback address or ``localhost`` (IPv4-mapped loopback counts)."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_wildcard(host: str) -> bool:
    host = host.strip()
    if host in _WILDCARD_HOSTS:
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    return False


def split_host_port(value: str) -> tuple[str, int] | None:
    """``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` or ``PORT`` (wildcard host); None if empty/bad."""
    value = value.strip()
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "", value
    if not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


def configured_service_ports(settings: Settings) -> dict[int, str]:
    """The default service ports plus the ports of the configured database and Valkey URLs."""
    ports = dict(SERVICE_PORTS)
    for url, kind, default in (
        (settings.database_url, "postgresql", 5432),
        (settings.valkey_url, "valkey", 6379),
    ):
        if not url:
            continue
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.startswith("unix"):
            continue
        with contextlib.suppress(ValueError):
            ports[parts.port or default] = kind
    return ports
