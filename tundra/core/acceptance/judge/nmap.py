"""nmap: the TLS versions and suites of the panel port, and the service ports from outside.

Two scans, XML on stdout (``-oX -``), no host discovery and no reverse DNS (``-Pn -n``):

- ``nmap -Pn -n -p PORT --script +ssl-enum-ciphers -oX - HOST`` for TR-02/TR-03; the ``+`` runs
  the script whatever service nmap guesses the port is. No ``-sV``: version detection of the
  panel port costs a minute and a half (an unknown service to nmap) and nothing here uses it.
- ``[--outside-probe PREFIX] nmap -Pn -n -p PORTS -oX - HOSTS`` for NX-02, on exactly the hosts
  and service ports tundra's NX-02 probed (from its evidence), from the same vantage point.

nmap reports facts, not a policy, so its verdict applies the catalogue's plain wording to what
it saw: a protocol version other than TLS 1.3 → TR-02 fails; a suite other than the three TLS
1.3 AEAD suites, or nmap's own "least strength" grade below A → TR-03 fails (nmap sees the
negotiated group only, not every group accepted); an open service port → NX-02 fails.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

from tundra.core.acceptance.judge.base import Findings, Job, Scanner, ScannerError, Verdict

ALLOWED_SUITES: Final = frozenset(
    {
        "TLS_AKE_WITH_AES_128_GCM_SHA256",
        "TLS_AKE_WITH_AES_256_GCM_SHA384",
        "TLS_AKE_WITH_CHACHA20_POLY1305_SHA256",
    }
)


def _root(xml: str) -> ET.Element:
    try:
        # nmap's own output; expat never fetches external entities.
        return ET.fromstring(xml)  # noqa: S314
    except ET.ParseError as exc:
        raise ScannerError(f"nmap's XML cannot be read: {exc}") from None


def _elems(table: ET.Element) -> dict[str, str]:
    return {e.get("key", ""): (e.text or "") for e in table.findall("elem")}


def parse_tls(xml: str) -> dict[str, Any]:
    """ssl-enum-ciphers of the first port: versions -> suites, least strength, warnings."""
    root = _root(xml)
    port = root.find("host/ports/port")
    if port is None:
        raise ScannerError("nmap reported no port")
    state = port.find("state")
    script = port.find("script[@id='ssl-enum-ciphers']")
    if script is None:
        raise ScannerError(
            f"ssl-enum-ciphers gave no result (port {port.get('portid')} "
            f"{state.get('state') if state is not None else 'unknown'})"
        )
    versions: dict[str, list[dict[str, str]]] = {}
    warnings: list[str] = []
    for table in script.findall("table"):
        key = table.get("key", "")
        if not key.startswith(("TLS", "SSL")):
            continue
        ciphers = table.find("table[@key='ciphers']")
        versions[key] = [_elems(t) for t in ciphers.findall("table")] if ciphers is not None else []
        for warn in table.findall("table[@key='warnings']/elem"):
            warnings.append(f"{key}: {warn.text}")
    top = _elems(script)
    return {"versions": versions, "least_strength": top.get("least strength"), "warnings": warnings}


def interpret_tls(parsed: Mapping[str, Any]) -> list[Verdict]:
    versions: Mapping[str, list[dict[str, str]]] = parsed["versions"]
    lines = [
        f"{version}: "
        + ", ".join(f"{c.get('name')} ({c.get('kex_info')}) - {c.get('strength')}" for c in suites)
        for version, suites in versions.items()
    ]
    old = [v for v in versions if v != "TLSv1.3"]
    tr02_ok = not old and "TLSv1.3" in versions
    tr02 = Verdict(
        "TR-02",
        tr02_ok,
        (f"versions offered: {', '.join(versions) or 'none'}", *lines),
    )
    foreign = sorted({c.get("name", "?") for s in versions.values() for c in s} - ALLOWED_SUITES)
    least = parsed.get("least_strength")
    problems = []
    if foreign:
        problems.append(f"suites outside the TLS 1.3 AEAD set: {', '.join(foreign)}")
    if least not in (None, "A"):
        problems.append(f"nmap's least strength grade is {least}")
    tr03 = Verdict(
        "TR-03",
        not problems,
        (*problems, f"least strength: {least}", *lines, *parsed["warnings"]),
    )
    return [tr02, tr03]


def parse_ports(xml: str) -> list[dict[str, str]]:
    """Every (host, port, state, service) of a port scan."""
    root = _root(xml)
    rows = []
    for host in root.findall("host"):
        address = host.find("address")
        name = address.get("addr", "?") if address is not None else "?"
        for port in host.findall("ports/port"):
            state = port.find("state")
            service = port.find("service")
            rows.append(
                {
                    "host": name,
                    "port": port.get("portid", "?"),
                    "state": state.get("state", "?") if state is not None else "?",
                    "reason": state.get("reason", "") if state is not None else "",
                    "service": service.get("name", "") if service is not None else "",
                }
            )
    return rows


def interpret_ports(rows: Sequence[Mapping[str, str]], *, vantage: str) -> Verdict:
    lines = [
        f"{r['host']}:{r['port']}/tcp {r['state']} ("
        + ", ".join(part for part in (r["reason"], r["service"]) if part)
        + ")"
        for r in rows
    ]
    open_ = [line for line, r in zip(lines, rows, strict=True) if r["state"] == "open"]
    return Verdict("NX-02", not open_ and bool(rows), (f"vantage: {vantage}", *lines))


def nx02_targets(job: Job) -> tuple[list[str], list[int]]:
    """The hosts and service ports tundra's NX-02 probed (its evidence), else nothing."""
    result = job.results.get("NX-02")
    probes = (result.evidence.get("probes") if result is not None else None) or {}
    hosts = sorted(probes)
    ports = sorted(
        {
            int(entry["port"])
            for entries in probes.values()
            for entry in entries
            if entry.get("kind") != "control"
        }
    )
    return hosts, ports


def _family(host: str) -> list[str]:
    try:
        return ["-6"] if ipaddress.ip_address(host.strip("[]")).version == 6 else []
    except ValueError:
        return []


class Nmap(Scanner):
    name: ClassVar[str] = "nmap"
    executable: ClassVar[str] = "nmap"
    checks: ClassVar[frozenset[str]] = frozenset({"TR-02", "TR-03", "NX-02"})
    install_hint: ClassVar[str] = "apt-get install nmap"
    timeout: ClassVar[float] = 60.0

    def tls_command(self, job: Job, tool: str) -> list[str]:
        host = job.target.host
        return [
            tool,
            *_family(host),
            "-Pn",
            "-n",
            "-p",
            str(job.target.port),
            "--script",
            # "+": run it whatever nmap guesses the port is. Its port rule wants a known TLS
            # port or service, so on a random port it ran or not depending on the number.
            "+ssl-enum-ciphers",
            "-oX",
            "-",
            host,
        ]

    def scan(self, job: Job, tool: str) -> Findings:
        verdicts: list[Verdict] = []
        notes: list[str] = []
        version = None
        if "TR-02" in job.results or "TR-03" in job.results:
            done = job.run(self.tls_command(job, tool))
            version = _root(done.stdout).get("version")
            verdicts.extend(interpret_tls(parse_tls(done.stdout)))
        if "NX-02" in job.results:
            hosts, ports = nx02_targets(job)
            if not hosts or not ports:
                notes.append("NX-02 not compared: tundra's NX-02 probed no host (see its result)")
            else:
                prefix = list(job.options.outside_probe)
                rows: list[dict[str, str]] = []
                # nmap scans one address family per run.
                for group in (
                    [h for h in hosts if not _family(h)],
                    [h for h in hosts if _family(h)],
                ):
                    if not group:
                        continue
                    argv = [*prefix, tool, *_family(group[0]), "-Pn", "-n"]
                    argv += ["-p", ",".join(map(str, ports)), "-oX", "-", *group]
                    done = job.run(argv)
                    version = version or _root(done.stdout).get("version")
                    rows.extend(parse_ports(done.stdout))
                vantage = ("through " + " ".join(prefix)) if prefix else "this runner"
                verdicts.append(interpret_ports(rows, vantage=vantage))
        return Findings(tuple(verdicts), (), tuple(notes), version)
