"""NX-01: the listener inventory.

NX-01 reads the kernel's TCP tables (``/proc/net/tcp`` and ``/proc/net/tcp6``, state ``0A`` =
LISTEN) and names who listens by matching socket inodes with ``/proc/<pid>/fd`` (every process
when the runner is root, its own otherwise). PostgreSQL and Valkey (their default ports, the
ports of the configured ``database_url``/``valkey_url``, and any process called like them)
must listen on loopback only; a wildcard listener is allowed only on a port tundra itself is
configured to listen on everywhere (``panel_listen``, ``redirect_listen``, ``gateway_listen``
with a wildcard host) or that the operator declared (the ``allowed_listeners`` run option,
e.g. ``0.0.0.0:22`` for sshd). UDP is not inventoried: neither service speaks it.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tundra.core.acceptance.checks.network.addresses import (
    SERVICE_PORTS,
    configured_service_ports,
    is_loopback,
    is_wildcard,
    split_host_port,
)
from tundra.core.acceptance.model import Outcome, Section, Severity, errored, failed, passed
from tundra.core.acceptance.registry import check

if TYPE_CHECKING:
    from tundra.core.acceptance.context import RunContext
    from tundra.core.settings import Settings


#: Process names (``/proc/<pid>/comm``) of those services, whatever port they use.
SERVICE_PROCESSES: Final[Mapping[str, str]] = {
    "postgres": "postgresql",
    "postmaster": "postgresql",
    "redis-server": "valkey",
    "valkey-server": "valkey",
}
#: Settings whose wildcard host makes a wildcard listener on their port expected.
LISTEN_SETTINGS: Final = ("panel_listen", "redirect_listen", "gateway_listen")
_LISTEN_STATE: Final = "0A"


@dataclass(frozen=True, slots=True)
class Listener:
    """One listening TCP socket of this host's network namespace."""

    family: int  # 4 or 6
    address: str
    port: int
    uid: int
    inode: int
    #: (pid, process name) of every process holding the socket (empty: not visible to us).
    holders: tuple[tuple[int, str], ...] = ()

    @property
    def scope(self) -> str:
        if is_wildcard(self.address):
            return "wildcard"
        return "loopback" if is_loopback(self.address) else "address"

    @property
    def label(self) -> str:
        host = f"[{self.address}]" if self.family == 6 else self.address
        return f"{host}:{self.port}"

    def evidence(self) -> dict[str, Any]:
        return {
            "listen": self.label,
            "scope": self.scope,
            "uid": self.uid,
            "processes": [{"pid": pid, "name": name} for pid, name in self.holders],
        }


def _decode_address(hex_address: str) -> str:
    # The kernel prints each 32-bit word of the address in host byte order.
    words = [hex_address[i : i + 8] for i in range(0, len(hex_address), 8)]
    raw = b"".join(int(word, 16).to_bytes(4, sys.byteorder) for word in words)
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def parse_proc_net_tcp(text: str, *, family: int) -> list[Listener]:
    """The LISTEN rows of a ``/proc/net/tcp`` or ``/proc/net/tcp6`` table."""
    listeners = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN_STATE:
            continue
        address, _, port = fields[1].partition(":")
        listeners.append(
            Listener(
                family=family,
                address=_decode_address(address),
                port=int(port, 16),
                uid=int(fields[7]),
                inode=int(fields[9]),
            )
        )
    return listeners


def socket_holders(
    inodes: Collection[int], *, proc: Path = Path("/proc")
) -> dict[int, list[tuple[int, str]]]:
    """inode -> [(pid, name)] for the sockets among ``inodes`` we may see in ``/proc/*/fd``."""
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    found: dict[int, list[tuple[int, str]]] = {}
    if not wanted:
        return found
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            fds = os.scandir(f"{entry.path}/fd")
        except OSError:  # not ours to look at, or gone
            continue
        with fds:
            for fd in fds:
                try:
                    link = os.readlink(fd.path)
                except OSError:
                    continue
                inode = wanted.get(link)
                if inode is not None:
                    found.setdefault(inode, []).append((pid, _process_name(entry.path)))
    return found


def _process_name(pid_dir: str) -> str:
    try:
        with open(f"{pid_dir}/comm", encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return "?"


def read_listeners(*, proc: Path = Path("/proc")) -> list[Listener]:
    """Every listening TCP socket (IPv4 and IPv6) of this network namespace, with holders."""
    listeners: list[Listener] = []
    for name, family in (("tcp", 4), ("tcp6", 6)):
        try:
            text = (proc / "net" / name).read_text()
        except FileNotFoundError:  # IPv6 disabled
            continue
        listeners.extend(parse_proc_net_tcp(text, family=family))
    holders = socket_holders({item.inode for item in listeners}, proc=proc)
    return [
        Listener(
            item.family,
            item.address,
            item.port,
            item.uid,
            item.inode,
            tuple(sorted(set(holders.get(item.inode, ())))),
        )
        for item in listeners
    ]


def service_kind(listener: Listener, service_ports: Mapping[int, str]) -> str | None:
    """ "postgresql"/"valkey" when the listener is one of those services (by port or process)."""
    for _, name in listener.holders:
        if name in SERVICE_PROCESSES:
            return SERVICE_PROCESSES[name]
    return service_ports.get(listener.port)


def evaluate_listeners(
    listeners: Sequence[Listener],
    *,
    allowed_wildcard: Mapping[int, str],
    service_ports: Mapping[int, str] = SERVICE_PORTS,
) -> Outcome:
    """NX-01's rule over an inventory.

    ``allowed_wildcard``: port -> why a wildcard listener there is expected (a setting or the
    operator's declaration). ``service_ports``: port -> "postgresql"/"valkey".
    """
    problems: list[str] = []
    services: list[dict[str, Any]] = []
    wildcard: list[dict[str, Any]] = []
    exposed: list[dict[str, Any]] = []
    for item in sorted(listeners, key=lambda x: (x.port, x.family, x.address)):
        kind = service_kind(item, service_ports)
        if kind is not None:
            services.append({**item.evidence(), "service": kind})
            if item.scope != "loopback":
                problems.append(f"{kind} listens on {item.label} ({item.scope}), not loopback")
            continue
        if item.scope == "wildcard":
            reason = allowed_wildcard.get(item.port)
            wildcard.append({**item.evidence(), "allowed_by": reason})
            if reason is None:
                who = ", ".join(f"{name}[{pid}]" for pid, name in item.holders) or "unknown"
                problems.append(f"unexpected wildcard listener {item.label} (held by {who})")
        elif item.scope == "address":
            exposed.append(item.evidence())
    evidence: dict[str, Any] = {
        "listeners": len(listeners),
        "service_listeners": services,
        "wildcard_listeners": wildcard,
        "address_listeners": exposed,
        "allowed_wildcard_ports": {str(port): why for port, why in allowed_wildcard.items()},
        "service_ports": {str(port): kind for port, kind in service_ports.items()},
        "problems": problems,
    }
    if problems:
        return failed("; ".join(problems), **evidence)
    return passed(
        f"{len(services)} PostgreSQL/Valkey listener(s) on loopback only; "
        f"{len(wildcard)} wildcard listener(s), all expected",
        **evidence,
    )


def allowed_wildcard_ports(settings: Settings, declared: Iterable[str] = ()) -> dict[int, str]:
    """Ports where a wildcard listener is expected: tundra's own, and the operator's list."""
    allowed: dict[int, str] = {}
    for name in LISTEN_SETTINGS:
        parsed = split_host_port(str(getattr(settings, name)))
        if parsed is not None and is_wildcard(parsed[0]):
            allowed[parsed[1]] = f"{name} = {getattr(settings, name)}"
    for entry in declared:
        parsed = split_host_port(entry)
        if parsed is not None:
            allowed.setdefault(parsed[1], f"allowed_listeners: {entry}")
    return allowed


def _declared_listeners(ctx: RunContext) -> tuple[str, ...]:
    # A run option the operator sets for listeners tundra does not own (sshd on 0.0.0.0:22).
    return tuple(ctx.options.allowed_listeners)


@check(
    "NX-01",
    "Listener inventory: services on loopback, no stray wildcard listeners",
    section=Section.NETWORK,
    severity=Severity.HIGH,
    needs=("services",),
)
def listener_inventory(ctx: RunContext) -> Outcome:
    settings = ctx.services.settings
    listeners = read_listeners()
    if not listeners:
        return errored("no listening TCP socket found: /proc/net/tcp is not this host's view")
    outcome = evaluate_listeners(
        listeners,
        allowed_wildcard=allowed_wildcard_ports(settings, _declared_listeners(ctx)),
        service_ports=configured_service_ports(settings),
    )
    if os.geteuid() != 0:
        outcome.evidence["note"] = "not root: processes of other users are not named"
    return outcome
