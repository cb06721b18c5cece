"""Acceptance checks of the network section: NX-01 … NX-03 (../shared/design/ACCEPTANCE.md).

- NX-01 reads the kernel's TCP tables (``/proc/net/tcp`` and ``/proc/net/tcp6``, state ``0A`` =
  LISTEN) and names who listens by matching socket inodes with ``/proc/<pid>/fd`` (every process
  when the runner is root, its own otherwise). PostgreSQL and Valkey (their default ports, the
  ports of the configured ``database_url``/``valkey_url``, and any process called like them)
  must listen on loopback only; a wildcard listener is allowed only on a port tundra itself is
  configured to listen on everywhere (``panel_listen``, ``redirect_listen``, ``gateway_listen``
  with a wildcard host) or that the operator declared (the ``allowed_listeners`` run option,
  e.g. ``0.0.0.0:22`` for sshd). UDP is not inventoried: neither service speaks it.
- NX-02 connects to 5432 and 6379 (and the configured ports) of the target host from the runner,
  or through the ``outside_probe`` argv prefix (a network namespace in the tests), with a tiny
  standard-library probe run by ``sys.executable``. Refused, filtered (timeout) or unreachable
  passes; open fails, and a Valkey port that answers an unauthenticated PING with ``+PONG`` is
  named as such. Stricter than a port scan: the panel port is probed as a control, and when it
  is not reachable either the vantage point sees nothing, so the result is inconclusive. A
  loopback target (a local run) is probed on this host's own non-loopback addresses: the same
  host's view of its listeners, which cannot see a firewall.
- NX-03 asks the configured services about their own configuration: PostgreSQL
  ``listen_addresses`` (loopback or empty only) and its pg_hba rules (``pg_hba_file_rules`` when
  the database user may read it, else the ``pg_hba.conf`` file when local and readable; ``trust``
  on any ``host*`` line fails), Valkey ``bind`` (loopback only), ``protected-mode yes``, and a
  password (``requirepass`` or a default user that is not ``nopass``).
"""

from __future__ import annotations

import contextlib
import glob
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tundra.core.acceptance.model import (
    Outcome,
    Section,
    Severity,
    errored,
    failed,
    passed,
    skipped,
)
from tundra.core.acceptance.registry import check

if TYPE_CHECKING:
    from tundra.core.acceptance.context import RunContext
    from tundra.core.settings import Settings

#: Default ports of the services that must never be reachable from outside.
SERVICE_PORTS: Final[Mapping[int, str]] = {5432: "postgresql", 6379: "valkey"}
#: Process names (``/proc/<pid>/comm``) of those services, whatever port they use.
SERVICE_PROCESSES: Final[Mapping[str, str]] = {
    "postgres": "postgresql",
    "postmaster": "postgresql",
    "redis-server": "valkey",
    "valkey-server": "valkey",
}
#: Settings whose wildcard host makes a wildcard listener on their port expected.
LISTEN_SETTINGS: Final = ("panel_listen", "redirect_listen", "gateway_listen")
_WILDCARD_HOSTS: Final = frozenset({"", "*", "0.0.0.0", "::", "[::]"})  # noqa: S104 - names, not binds
_LISTEN_STATE: Final = "0A"


# --------------------------------------------------------------------------------------------
# Addresses


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


# --------------------------------------------------------------------------------------------
# NX-01: the listener inventory


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


# --------------------------------------------------------------------------------------------
# NX-02: the view from outside

#: The probe, self-contained (standard library only) so that it runs wherever the prefix puts
#: it: ``python -c PROBE HOST TIMEOUT PORT:KIND...`` prints one JSON list.
PROBE_SOURCE: Final = r"""
import json, socket, sys
host, timeout = sys.argv[1], float(sys.argv[2])
results = []
for spec in sys.argv[3:]:
    port, _, kind = spec.partition(":")
    entry = {"port": int(port), "kind": kind}
    try:
        conn = socket.create_connection((host, int(port)), timeout=timeout)
    except ConnectionRefusedError:
        entry["state"] = "refused"
    except TimeoutError:
        entry["state"] = "filtered"
    except OSError as exc:
        entry["state"] = "unreachable"
        entry["error"] = str(exc)
    else:
        entry["state"] = "open"
        with conn:
            if kind == "valkey":
                try:
                    conn.settimeout(timeout)
                    conn.sendall(b"*1\r\n$4\r\nPING\r\n")
                    entry["ping_reply"] = conn.recv(200).decode("latin-1").strip()
                except OSError as exc:
                    entry["ping_error"] = str(exc)
    results.append(entry)
print(json.dumps(results))
"""


def run_probe(
    host: str,
    ports: Mapping[int, str],
    *,
    prefix: Sequence[str] = (),
    timeout: float = 2.0,
) -> list[dict[str, Any]]:
    """Probe ``ports`` of ``host`` (from here, or wherever ``prefix`` runs the probe)."""
    argv = [*prefix, sys.executable, "-I", "-S", "-c", PROBE_SOURCE, host, str(timeout)]
    argv += [f"{port}:{kind}" for port, kind in sorted(ports.items())]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout * (len(ports) + 1) + 10, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the probe failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


def evaluate_outside(
    results_by_host: Mapping[str, Sequence[Mapping[str, Any]]], *, control_port: int | None
) -> Outcome:
    """NX-02's rule. ``control_port``: the panel's port, which must be reachable, or None."""
    problems: list[str] = []
    unreachable_control: list[str] = []
    for host, results in results_by_host.items():
        for entry in results:
            label = f"{host}:{entry['port']}"
            if entry["kind"] == "control":
                if entry["state"] != "open":
                    unreachable_control.append(f"{label} is {entry['state']}")
                continue
            if entry["state"] != "open":
                continue
            reply = str(entry.get("ping_reply", ""))
            if reply.startswith("+PONG"):
                problems.append(f"{label} ({entry['kind']}) answers PING without authentication")
            else:
                problems.append(f"{label} ({entry['kind']}) is open from this vantage point")
    evidence: dict[str, Any] = {"probes": {h: list(r) for h, r in results_by_host.items()}}
    if problems:
        return failed("; ".join(problems), **evidence, problems=problems)
    if control_port is not None and unreachable_control:
        return errored(
            "inconclusive: the panel port itself is not reachable from this vantage point ("
            + "; ".join(unreachable_control)
            + "), so closed service ports prove nothing",
            **evidence,
        )
    return passed("service ports are refused, filtered or unreachable from outside", **evidence)


def local_addresses(*, proc: Path = Path("/proc")) -> list[str]:
    """This host's non-loopback unicast addresses (IPv4 from fib_trie, IPv6 from if_inet6)."""
    found: list[str] = []
    with contextlib.suppress(OSError):
        previous = ""
        for line in (proc / "net" / "fib_trie").read_text().splitlines():
            text = line.strip()
            if text.startswith(("|--", "+--")):
                previous = text[3:].strip().split()[0]
            elif text.startswith("/32 host LOCAL") and previous and not is_loopback(previous):
                found.append(previous)
    with contextlib.suppress(OSError):
        for line in (proc / "net" / "if_inet6").read_text().splitlines():
            raw = line.split()[0]
            address = ipaddress.IPv6Address(bytes.fromhex(raw))
            if not (address.is_loopback or address.is_link_local or address.is_multicast):
                found.append(str(address))
    return sorted(set(found), key=lambda a: (":" in a, a))


@check(
    "NX-02",
    "From outside, PostgreSQL and Valkey are refused or filtered",
    section=Section.NETWORK,
    severity=Severity.CRITICAL,
    timeout=30.0,
)
def outside_view(ctx: RunContext) -> Outcome:
    ports = dict(SERVICE_PORTS)
    if ctx.options.services is not None:
        ports.update(configured_service_ports(ctx.options.services.settings))
    prefix = tuple(ctx.options.outside_probe)
    timeout = min(2.0, ctx.io_timeout())
    host = ctx.target.host
    if is_loopback(host):
        if prefix:
            return errored(
                f"the target {host} is loopback, which an outside probe cannot reach",
                hint="give --url with the address the panel has on the outside network",
            )
        hosts = local_addresses()
        if not hosts:
            return skipped(
                "the target is loopback and this host has no other address to probe from"
            )
        vantage = "this host, probing its own non-loopback addresses (firewalls not seen)"
        control: int | None = None
    else:
        hosts = [host]
        vantage = "outside probe: " + " ".join(prefix) if prefix else "the runner"
        control = ctx.target.port
    results: dict[str, list[dict[str, Any]]] = {}
    for each in hosts:
        wanted = dict(ports)
        if control is not None:
            wanted[control] = "control"
        try:
            results[each] = run_probe(each, wanted, prefix=prefix, timeout=timeout)
        except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
            return errored(f"the probe could not run: {exc}", vantage=vantage, host=each)
    outcome = evaluate_outside(results, control_port=control)
    outcome.evidence["vantage"] = vantage
    return outcome


# --------------------------------------------------------------------------------------------
# NX-03: the services' own configuration


@dataclass(frozen=True, slots=True)
class HbaRule:
    """One pg_hba rule (from ``pg_hba_file_rules`` or parsed from the file)."""

    line: int
    type: str
    databases: tuple[str, ...]
    users: tuple[str, ...]
    address: str | None
    method: str
    netmask: str | None = None
    error: str | None = None

    def evidence(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "type": self.type,
            "database": list(self.databases),
            "user": list(self.users),
            "address": self.address,
            "netmask": self.netmask,
            "method": self.method,
            "error": self.error,
        }


_HBA_TOKEN = re.compile(r'"((?:[^"]|"")*)"|([^\s,"]+)|(,)')
_HOST_TYPES: Final = frozenset({"host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc"})


def _hba_fields(line: str) -> list[list[str]]:
    """Whitespace-separated fields, each a comma-separated list of (possibly quoted) tokens."""
    fields: list[list[str]] = []
    position = 0
    joining = False
    for match in _HBA_TOKEN.finditer(line):
        gap = line[position : match.start()]
        position = match.end()
        if match.group(3):
            joining = True
            continue
        token = match.group(1).replace('""', '"') if match.group(1) is not None else match.group(2)
        if fields and (joining or (not gap and match.group(1) is not None)):
            fields[-1].append(token)
        else:
            fields.append([token])
        joining = False
    return fields


def parse_pg_hba(text: str) -> list[HbaRule]:
    """The rules of a ``pg_hba.conf`` text (comments, quotes, lists, continuation lines).

    ``include*`` directives are kept as rules of type ``include`` so that the evaluation can say
    it did not follow them.
    """
    rules: list[HbaRule] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw)
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line, pending = pending + line, ""
        fields = _hba_fields(line)
        if not fields:
            continue
        kind = fields[0][0].lower()
        if kind.startswith("include"):
            target = " ".join(t for f in fields[1:] for t in f)
            rules.append(HbaRule(start, "include", (), (), target, kind))
            continue
        if kind == "local" and len(fields) >= 4:
            rules.append(
                HbaRule(start, kind, tuple(fields[1]), tuple(fields[2]), None, fields[3][0])
            )
        elif kind in _HOST_TYPES and len(fields) >= 5:
            address, rest = fields[3][0], fields[4:]
            netmask = None
            if "/" not in address and _looks_like_ip(address) and len(rest) >= 2:
                netmask, rest = rest[0][0], rest[1:]
            rules.append(
                HbaRule(
                    start, kind, tuple(fields[1]), tuple(fields[2]), address, rest[0][0], netmask
                )
            )
        else:
            rules.append(HbaRule(start, kind, (), (), None, "", error="cannot parse this line"))
    return rules


def _strip_comment(line: str) -> str:
    quoted = False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:index]
    return line


def _looks_like_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def evaluate_postgres(listen_addresses: str | None, rules: Sequence[HbaRule] | None) -> list[str]:
    """Problems with PostgreSQL's listen_addresses and pg_hba rules (None: not known)."""
    problems: list[str] = []
    if listen_addresses is not None:
        for entry in (e.strip() for e in listen_addresses.split(",")):
            if entry and not is_loopback(entry):
                problems.append(f"PostgreSQL listen_addresses includes {entry!r} (not loopback)")
    for rule in rules or ():
        if rule.type in _HOST_TYPES and rule.method.lower() == "trust":
            where = rule.address or "?"
            problems.append(
                f"pg_hba line {rule.line}: {rule.type} {','.join(rule.databases)} "
                f"{','.join(rule.users)} {where} uses trust (no authentication)"
            )
    return problems


def evaluate_valkey(facts: Mapping[str, Any]) -> list[str]:
    """Problems with Valkey's bind, protected-mode and authentication (facts from CONFIG/ACL)."""
    problems: list[str] = []
    port = str(facts.get("port", ""))
    bind = facts.get("bind")
    if bind is not None and port != "0":
        addresses = [a.lstrip("-") for a in str(bind).split()]
        if not addresses:
            problems.append("Valkey bind is empty: it listens on every interface")
        for address in addresses:
            if not is_loopback(address):
                problems.append(f"Valkey binds {address!r} (not loopback)")
    mode = facts.get("protected_mode")
    if mode is not None and str(mode).lower() != "yes":
        problems.append(f"Valkey protected-mode is {mode!r}, not 'yes'")
    default_user = facts.get("default_user")
    if default_user is not None:
        flags = str(default_user).split()
        if "on" in flags and "nopass" in flags:
            problems.append("Valkey's default user is enabled without a password (nopass)")
    elif facts.get("requirepass_set") is False:
        problems.append("Valkey has no requirepass and no ACL for the default user")
    return problems


@dataclass
class PostgresFacts:
    """What PostgreSQL says about itself through the configured connection."""

    listen_addresses: str | None = None
    rules: list[HbaRule] | None = None
    rules_source: str | None = None
    data_directory: str | None = None
    hba_file: str | None = None
    errors: dict[str, str] = field(default_factory=dict)

    def evidence(self) -> dict[str, Any]:
        return {
            "listen_addresses": self.listen_addresses,
            "hba_rules": None if self.rules is None else [r.evidence() for r in self.rules],
            "hba_source": self.rules_source,
            "data_directory": self.data_directory,
            "hba_file": self.hba_file,
            "errors": dict(self.errors),
        }


def postgres_facts(url: str, *, timeout: float, local: bool) -> PostgresFacts:
    """Ask PostgreSQL (as the configured user) for its listen addresses, hba rules, data dir.

    Each question stands alone: a user without the privilege for one still answers the others.
    Without ``pg_hba_file_rules``, a local runner reads the hba file (from ``SHOW hba_file``, or
    the Debian cluster whose port matches) when it may.
    """
    import psycopg

    facts = PostgresFacts()
    try:
        conn = psycopg.connect(url, connect_timeout=max(1, int(timeout)), autocommit=True)
    except psycopg.Error as exc:
        facts.errors["connect"] = _first_line(exc)
        return facts
    with conn:
        for name in ("listen_addresses", "data_directory", "hba_file"):
            try:
                row = conn.execute(f"SHOW {name}").fetchone()
                setattr(facts, name, None if row is None else str(row[0]))
            except psycopg.Error as exc:
                facts.errors[name] = _first_line(exc)
        try:
            rows = conn.execute(
                "SELECT line_number, type, database, user_name, address, netmask, auth_method,"
                " error FROM pg_hba_file_rules ORDER BY line_number"
            ).fetchall()
            facts.rules = [
                HbaRule(
                    int(r[0] or 0),
                    str(r[1] or ""),
                    tuple(r[2] or ()),
                    tuple(r[3] or ()),
                    r[4],
                    str(r[6] or ""),
                    r[5],
                    r[7],
                )
                for r in rows
            ]
            facts.rules_source = "pg_hba_file_rules"
        except psycopg.Error as exc:
            facts.errors["pg_hba_file_rules"] = _first_line(exc)
    if facts.rules is None and local:
        port = urllib.parse.urlsplit(url).port or 5432
        for path in _hba_candidates(facts.hba_file, port):
            try:
                facts.rules = parse_pg_hba(Path(path).read_text(encoding="utf-8"))
            except OSError as exc:
                facts.errors[f"read {path}"] = str(exc)
                continue
            facts.rules_source = path
            break
    return facts


def _hba_candidates(hba_file: str | None, port: int) -> list[str]:
    if hba_file:
        return [hba_file]
    found = []
    for conf in sorted(glob.glob("/etc/postgresql/*/*/postgresql.conf")):
        try:
            text = Path(conf).read_text(encoding="utf-8")
        except OSError:
            continue
        match = re.search(r"^\s*port\s*=\s*(\d+)", text, re.MULTILINE)
        if int(match.group(1) if match else 5432) == port:
            found.append(str(Path(conf).with_name("pg_hba.conf")))
    return found


def valkey_facts(url: str, *, timeout: float) -> dict[str, Any]:
    """Valkey's port, bind, protected-mode and default user, via the configured connection.

    The password itself is never kept: only whether one is set.
    """
    import redis

    facts: dict[str, Any] = {"errors": {}}
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        for name, key in (("port", "port"), ("bind", "bind"), ("protected-mode", "protected_mode")):
            try:
                value = client.config_get(name)
                facts[key] = _decoded(value.get(name)) if name in value else None
            except redis.RedisError as exc:
                facts["errors"][name] = str(exc)
        try:
            requirepass = client.config_get("requirepass")
            facts["requirepass_set"] = bool(requirepass.get("requirepass"))
        except redis.RedisError as exc:
            facts["errors"]["requirepass"] = str(exc)
        try:
            listed = client.execute_command("ACL", "LIST")  # type: ignore[no-untyped-call]
            users = [_decoded(u) for u in listed]
            default = next((u for u in users if u.startswith("user default ")), None)
            # The rule text carries a password hash (#...), never the password; keep only flags.
            facts["default_user"] = None if default is None else _acl_flags(default)
        except redis.RedisError as exc:
            facts["errors"]["acl"] = str(exc)
    finally:
        client.close()
    return facts


def _acl_flags(rule: str) -> str:
    return " ".join(t if not t.startswith(("#", ">")) else "<password hash>" for t in rule.split())


def _decoded(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def pg_facts_for(ctx: RunContext) -> PostgresFacts | None:
    """PostgreSQL's facts for this run (shared by NX-03 and ST-04), None without PostgreSQL."""
    url = ctx.services.settings.database_url
    if not url.startswith(("postgresql:", "postgres:")):
        return None
    timeout = ctx.io_timeout()
    return ctx.memo(
        "network:postgres-facts", lambda: postgres_facts(url, timeout=timeout, local=ctx.local)
    )


@check(
    "NX-03",
    "PostgreSQL and Valkey configuration: loopback, no trust, a password",
    section=Section.NETWORK,
    severity=Severity.HIGH,
    needs=("services",),
)
def service_configuration(ctx: RunContext) -> Outcome:
    settings = ctx.services.settings
    evidence: dict[str, Any] = {}
    problems: list[str] = []
    unknown: list[str] = []
    pg = pg_facts_for(ctx)
    if pg is not None:
        evidence["postgresql"] = pg.evidence()
        if pg.listen_addresses is None:
            unknown.append("PostgreSQL listen_addresses")
        if pg.rules is None:
            unknown.append("PostgreSQL pg_hba rules (need a superuser or a readable hba file)")
        elif any(rule.type == "include" for rule in pg.rules):
            unknown.append("pg_hba include directives (not followed)")
        problems += evaluate_postgres(pg.listen_addresses, pg.rules)
    if settings.valkey_url:
        facts = valkey_facts(settings.valkey_url, timeout=ctx.io_timeout())
        evidence["valkey"] = facts
        if "bind" not in facts and "port" not in facts and facts["errors"]:
            unknown.append("Valkey configuration (" + "; ".join(facts["errors"].values()) + ")")
        else:
            if facts.get("bind") is None and facts.get("port") != "0":
                unknown.append("Valkey bind")
            if facts.get("default_user") is None and "requirepass_set" not in facts:
                unknown.append("Valkey authentication")
        problems += evaluate_valkey(facts)
    if pg is None and not settings.valkey_url:
        return skipped("no PostgreSQL or Valkey configured: the embedded stores listen nowhere")
    evidence["problems"] = problems
    evidence["not_evaluated"] = unknown
    if problems:
        return failed("; ".join(problems), **evidence)
    if unknown:
        return errored("could not evaluate: " + "; ".join(unknown), **evidence)
    return passed("loopback only, no trust rules, authentication required", **evidence)
