"""NX-02: the view from outside.

NX-02 connects to 5432 and 6379 (and the configured ports) of the target host from the runner,
or through the ``outside_probe`` argv prefix (a network namespace in the tests), with a tiny
standard-library probe run by ``sys.executable``. Refused, filtered (timeout) or unreachable
passes; open fails, and a Valkey port that answers an unauthenticated PING with ``+PONG`` is
named as such. Stricter than a port scan: the panel port is probed as a control, and when it
is not reachable either the vantage point sees nothing, so the result is inconclusive. A
loopback target (a local run) is probed on this host's own non-loopback addresses: the same
host's view of its listeners, which cannot see a firewall.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tundra.core.acceptance.checks.network.addresses import (
    SERVICE_PORTS,
    configured_service_ports,
    is_loopback,
)
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
