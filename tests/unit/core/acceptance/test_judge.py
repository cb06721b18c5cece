"""``--judge``: public scanners next to tundra's verdicts.

- Parsers: the real output of sslyze, drheader, the MDN Observatory, nmap and systemd-analyze,
  captured from runs against the good and bad sites of ``judgefixtures.py``
  (tests/fixtures/judge/, re-captured with tests/fixtures/judge/capture.py).
- Live: every installed scanner against those sites, next to tundra's own run of the same
  checks; the agreement per check is pinned. A scanner that is not installed skips its live
  test with the reason (a failure with ``TUNDRA_REQUIRE_SCANNERS=1``).
- Robustness: a PATH without any scanner, and fake scanners that crash, print garbage or hang
  (a shell script on a temporary PATH): each is that scanner's result, never the run's failure.
- The CLI: ``--judge`` adds a ``judge`` object to the JSON report (schema-valid) and never
  changes the exit code.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner
from httpsfixtures import real_panel, tls_server_context
from judgefixtures import Deployment, StrictPki, deployment

from tundra.cli.app import cli
from tundra.core.acceptance.context import RunOptions
from tundra.core.acceptance.judge import Agreement, ScannerStatus, run_judge
from tundra.core.acceptance.judge import drheader as drheader_module
from tundra.core.acceptance.judge import nmap as nmap_module
from tundra.core.acceptance.judge import observatory as observatory_module
from tundra.core.acceptance.judge import sslyze as sslyze_module
from tundra.core.acceptance.judge import systemd_analyze as systemd_module
from tundra.core.acceptance.judge.aggregate import compare
from tundra.core.acceptance.judge.base import (
    Findings,
    Scanner,
    ScannerError,
    ScannerMissing,
    Verdict,
    scanner_env,
)
from tundra.core.acceptance.judge.drheader import Drheader
from tundra.core.acceptance.judge.nmap import Nmap
from tundra.core.acceptance.judge.observatory import Observatory
from tundra.core.acceptance.judge.sslyze import Sslyze
from tundra.core.acceptance.judge.systemd_analyze import SystemdAnalyze
from tundra.core.acceptance.model import (
    CATALOGUE,
    Report,
    Result,
    Severity,
    Status,
)
from tundra.core.acceptance.reporters.json import load_schema, report_to_dict
from tundra.core.acceptance.runner import run

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "judge"
REQUIRE_SCANNERS = os.environ.get("TUNDRA_REQUIRE_SCANNERS") == "1"
#: The checks tundra runs on the live sites (TR-01 needs the http twin; HD-04 a login).
CHECKS = ("TR-02", "TR-03", "TR-04", "TR-05", "TR-06", "HD-01", "HD-02", "HD-03", "HD-05", "HD-06")
A = Agreement


def capture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def by_check(findings: Findings) -> dict[str, Verdict]:
    return {v.check: v for v in findings.verdicts}


def need(scanner: Scanner) -> None:
    try:
        scanner.locate(scanner_env())
    except ScannerMissing:
        reason = f"{scanner.name} is not installed ({scanner.install_hint})"
        if REQUIRE_SCANNERS:
            pytest.fail(f"{reason}; TUNDRA_REQUIRE_SCANNERS=1 makes this a failure")
        pytest.skip(reason)


def result(check: str, status: Status, summary: str = "", **evidence: Any) -> Result:
    return Result(
        id=check,
        title=f"title of {check}",
        section=CATALOGUE[check],
        severity=Severity.HIGH,
        status=status,
        summary=summary or str(status),
        evidence=evidence,
        duration_ms=1,
    )


def report_of(url: str, *results: Result) -> Report:
    return Report(
        tool_version="test",
        target=url,
        started_at="2026-01-01T00:00:00.000000Z",
        finished_at="2026-01-01T00:00:01.000000Z",
        options=RunOptions(url=url).summary(),
        results=results,
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- sslyze ------------------------------------------------------------------------------------


def test_sslyze_agrees_with_the_good_capture() -> None:
    document = json.loads(capture("sslyze-good.json"))
    found = sslyze_module.interpret(document, capture("sslyze-good.txt"))
    verdicts = by_check(found)
    assert sorted(verdicts) == ["TR-02", "TR-03", "TR-04", "TR-05", "TR-06"]
    assert all(v.passed for v in verdicts.values()), verdicts
    assert found.version == "6.3.1"
    assert verdicts["TR-02"].evidence == ("versions accepted: TLSv1.3",)
    assert "chain validates against: Supplied CA file" in verdicts["TR-04"].evidence
    assert verdicts["TR-06"].evidence[0].startswith("HSTS on /login?next=/: max-age=63072000")


def test_sslyze_fails_the_bad_capture_with_its_own_words() -> None:
    document = json.loads(capture("sslyze-bad.json"))
    verdicts = by_check(sslyze_module.interpret(document, capture("sslyze-bad.txt")))
    assert not verdicts["TR-02"].passed
    assert verdicts["TR-02"].evidence[0].startswith("tls_versions: TLS versions {")
    assert not verdicts["TR-03"].passed
    reasons = [line.split(":", 1)[0] for line in verdicts["TR-03"].evidence]
    assert {"ciphers", "tls_curves"} <= set(reasons)
    assert "groups accepted: X25519, X448, secp256r1, secp384r1, secp521r1" in (
        verdicts["TR-03"].evidence
    )
    assert verdicts["TR-04"].passed  # the certificate is fine; the protocols are not
    # sslyze has no HSTS threshold: six months without includeSubDomains is "present".
    assert verdicts["TR-06"].passed
    assert "max-age=15552000, includeSubDomains=False" in verdicts["TR-06"].evidence[0]


def test_sslyze_without_its_compliance_verdict_judges_only_what_it_observed() -> None:
    document = json.loads(capture("sslyze-good.json"))
    console = (
        " COMPLIANCE AGAINST TLS CONFIGURATION\n ---\n"
        "    127.0.0.1:443: ERROR - Scan did not run successfully; review the scan logs above.\n"
    )
    found = sslyze_module.interpret(document, console)
    assert sorted(by_check(found)) == ["TR-05", "TR-06"]
    assert "compliance check did not run (a scan command failed)" in found.notes[0]


def test_sslyze_keeps_criteria_without_a_check_as_unmapped() -> None:
    document = json.loads(capture("sslyze-good.json"))
    console = (
        "COMPLIANCE AGAINST TLS CONFIGURATION\n"
        "    host:443: FAILED - Not compliant.\n"
        "        * tls_vulnerability_heartbleed: Server is vulnerable to Heartbleed.\n"
        "        * tls_vulnerability_compression: Server is vulnerable to TLS compression.\n"
    )
    found = sslyze_module.interpret(document, console)
    assert found.unmapped == ("tls_vulnerability_heartbleed: Server is vulnerable to Heartbleed.",)
    assert not by_check(found)["TR-05"].passed
    assert by_check(found)["TR-02"].passed


def test_sslyze_reports_a_refused_connection_as_its_error() -> None:
    document = json.loads(capture("sslyze-refused.json"))
    with pytest.raises(ScannerError, match=r"could not connect: .*rejected the connection"):
        sslyze_module.interpret(document, "")


# --- drheader ----------------------------------------------------------------------------------


def test_drheader_reads_the_good_capture() -> None:
    found = drheader_module.interpret(
        drheader_module.parse_output(capture("drheader-good.json"), ""), url="https://x/login"
    )
    verdicts = by_check(found)
    failing = sorted(c for c, v in verdicts.items() if not v.passed)
    # drheader's own rules: Pragma and max-age=0 next to no-store, HSTS exactly one year.
    assert failing == ["HD-04", "TR-06"]
    assert verdicts["TR-06"].evidence[0].startswith("Strict-Transport-Security: Value does not")
    assert verdicts["HD-03"].evidence == ("no drheader rule for it fired on GET https://x/login",)
    assert found.unmapped == ("X-XSS-Protection: Header not included in response; expected ['0']",)


def test_drheader_reads_the_bad_capture() -> None:
    found = drheader_module.interpret(
        drheader_module.parse_output(capture("drheader-bad.json"), ""), url="https://x/login"
    )
    verdicts = by_check(found)
    assert sorted(c for c, v in verdicts.items() if not v.passed) == [
        "HD-03",
        "HD-04",
        "HD-05",
        "TR-06",
    ]
    rules = [line.split(":", 1)[0] for line in verdicts["HD-05"].evidence]
    assert rules == ["Server", "X-Powered-By"]


@pytest.mark.parametrize(
    ("rule", "message", "checks"),
    [
        ("Content-Security-Policy", "Header not included in response", {"HD-01", "HD-02"}),
        ("Content-Security-Policy - script-src", "Must-Avoid directive included", {"HD-02"}),
        ("Content-Security-Policy - default-src", "Directive not included in response", {"HD-01"}),
        ("Set-Cookie - sid", "Must-Contain directive missed", {"ID-01"}),
        ("Cross-Origin-Embedder-Policy", "Header not included in response", set()),
    ],
)
def test_drheader_maps_its_csp_and_cookie_rules(rule: str, message: str, checks: set[str]) -> None:
    found = drheader_module.interpret([{"rule": rule, "message": message}], url="u")
    assert {c for c, v in by_check(found).items() if not v.passed} == checks
    assert bool(found.unmapped) == (not checks)


def test_drheader_text_instead_of_json_is_its_error() -> None:
    with pytest.raises(ScannerError, match=r"drheader gave no JSON: .*Connection refused"):
        drheader_module.parse_output(capture("drheader-refused.txt"), "")


# --- MDN HTTP Observatory ----------------------------------------------------------------------


def test_observatory_reads_the_good_capture() -> None:
    document = json.loads(capture("observatory-good.json"))
    found = observatory_module.interpret(document, standard_ports=False)
    verdicts = by_check(found)
    assert sorted(verdicts) == ["HD-01", "HD-02", "HD-03", "HD-06", "ID-01", "TR-06"]
    assert all(v.passed for v in verdicts.values())
    assert found.notes[0].startswith("TR-01 not compared: on a non-standard port")
    assert found.notes[-1] == "Observatory grade A+ (score 130)"
    on_standard_ports = by_check(observatory_module.interpret(document, standard_ports=True))
    assert on_standard_ports["TR-01"].passed


def test_observatory_reads_the_bad_capture() -> None:
    document = json.loads(capture("observatory-bad.json"))
    verdicts = by_check(observatory_module.interpret(document, standard_ports=False))
    assert not verdicts["HD-03"].passed
    assert verdicts["HD-03"].evidence[0] == (
        "x-content-type-options: x-content-type-options-not-implemented (pass=false)"
    )
    # Six months is enough for the Observatory; tundra wants a year and includeSubDomains.
    assert verdicts["TR-06"].passed
    assert "max-age 15552000, includeSubDomains False" in verdicts["TR-06"].evidence[0]


def test_observatory_error_document_is_its_error_with_the_fix() -> None:
    missing = "ENOENT: no such file or directory, open '/x/conf/hsts-preload.json'"
    with pytest.raises(ScannerError, match=r"hsts-preload\.json.*the content \{\}"):
        observatory_module.interpret({"error": missing}, standard_ports=True)


# --- nmap --------------------------------------------------------------------------------------


def test_nmap_reads_the_tls_captures() -> None:
    def tls(name: str) -> dict[str, Verdict]:
        parsed = nmap_module.parse_tls(capture(name))
        return {v.check: v for v in nmap_module.interpret_tls(parsed)}

    good = tls("nmap-tls-good.xml")
    assert good["TR-02"].passed and good["TR-03"].passed
    assert good["TR-02"].evidence[0] == "versions offered: TLSv1.3"
    bad = tls("nmap-tls-bad.xml")
    assert not bad["TR-02"].passed
    assert bad["TR-02"].evidence[0] == "versions offered: TLSv1.0, TLSv1.1, TLSv1.2, TLSv1.3"
    assert not bad["TR-03"].passed
    assert bad["TR-03"].evidence[0].startswith("suites outside the TLS 1.3 AEAD set: TLS_ECDHE")


def test_nmap_reads_the_port_capture() -> None:
    rows = nmap_module.parse_ports(capture("nmap-ports.xml"))
    assert sorted(r["state"] for r in rows) == ["closed", "open"]
    verdict = nmap_module.interpret_ports(rows, vantage="this runner")
    assert not verdict.passed
    assert verdict.evidence[0] == "vantage: this runner"
    assert any("/tcp open (syn-ack" in line for line in verdict.evidence)
    closed_only = [r for r in rows if r["state"] == "closed"]
    assert nmap_module.interpret_ports(closed_only, vantage="v").passed
    assert not nmap_module.interpret_ports([], vantage="v").passed  # nothing scanned: no pass


def test_nmap_garbage_is_its_error() -> None:
    with pytest.raises(ScannerError, match="nmap's XML cannot be read"):
        nmap_module.parse_tls("Starting Nmap… segmentation fault")


# --- systemd-analyze ---------------------------------------------------------------------------


def test_systemd_analyze_reads_the_units_capture() -> None:
    units = [Path("deploy/systemd/tundra.service"), Path("deploy/systemd/tundra-agent.service")]
    found = systemd_module.interpret(capture("systemd-analyze-units.txt"), units)
    (verdict,) = found.verdicts
    assert verdict.check == "ST-03" and verdict.passed
    assert set(verdict.evidence) == {
        "tundra-agent.service: exposure 1.1 OK",
        "tundra.service: exposure 1.4 OK",
    }
    assert found.notes == ()


def test_systemd_analyze_fails_exposed_units_and_notes_missing_ones() -> None:
    output = "→ Overall exposure level for tundra.service: 8.3 EXPOSED 🙁\n"
    found = systemd_module.interpret(output, [Path("tundra.service"), Path("other.service")])
    assert not found.verdicts[0].passed
    assert found.notes == ("systemd-analyze scored no other.service",)
    with pytest.raises(ScannerError, match="no exposure level"):
        systemd_module.interpret("Failed to open unit", [Path("tundra.service")])


# --- agreement -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tundra", "scanner_passed", "expected"),
    [
        (Status.PASS, True, A.AGREE),
        (Status.FAIL, False, A.AGREE),
        (Status.WAIVED, False, A.AGREE),
        (Status.FAIL, True, A.SCANNER_LAXER),
        (Status.WAIVED, True, A.SCANNER_LAXER),
        (Status.PASS, False, A.SCANNER_STRICTER),
        (Status.ERROR, False, A.NOT_COMPARED),
        (Status.SKIP, True, A.NOT_COMPARED),
        (None, True, A.NOT_COMPARED),
    ],
)
def test_compare(tundra: Status | None, scanner_passed: bool, expected: Agreement) -> None:
    verdict = Verdict("TR-06", scanner_passed, ("line",))
    tundra_result = None if tundra is None else result("TR-06", tundra, "summary")
    comparison = compare(verdict, "sslyze", tundra_result)
    assert comparison.agreement is expected
    assert comparison.scanner_verdict == ("pass" if scanner_passed else "fail")
    assert comparison.evidence == ("line",)
    if expected is A.SCANNER_LAXER:
        assert comparison.explanation.startswith(
            "disagree (scanner passes what tundra fails: scanner is laxer)"
        )
    if expected is A.SCANNER_STRICTER:
        assert comparison.explanation.endswith("needs a human look")


# --- live: the installed scanners against the local sites --------------------------------------


@dataclass(frozen=True)
class Judged:
    site: Deployment
    options: RunOptions
    report: Report


@pytest.fixture(scope="module", params=["good", "bad"])
def judged(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Judged]:
    kind = str(request.param)
    with deployment(kind, tmp_path_factory.mktemp(f"judge-{kind}")) as site:
        options = RunOptions(url=site.url, ca_file=site.ca, checks=CHECKS, judge=True)
        yield Judged(site, options, run(options))


#: (scanner, site) -> the agreement per check, as observed and explained in docs/acceptance.md.
EXPECTED: dict[tuple[str, str], dict[str, Agreement]] = {
    ("sslyze", "good"): {c: A.AGREE for c in ("TR-02", "TR-03", "TR-04", "TR-05", "TR-06")},
    ("sslyze", "bad"): {
        **{c: A.AGREE for c in ("TR-02", "TR-03", "TR-04", "TR-05")},
        "TR-06": A.SCANNER_LAXER,  # sslyze: an HSTS header is there
    },
    ("observatory", "good"): {c: A.AGREE for c in ("TR-06", "HD-01", "HD-02", "HD-03", "HD-06")},
    ("observatory", "bad"): {
        **{c: A.AGREE for c in ("HD-01", "HD-02", "HD-03", "HD-06")},
        "TR-06": A.SCANNER_LAXER,  # six months is enough for the Observatory
    },
    ("drheader", "good"): {
        **{c: A.AGREE for c in ("HD-01", "HD-02", "HD-03", "HD-05")},
        "TR-06": A.SCANNER_STRICTER,  # drheader wants max-age=31536000 exactly
    },
    ("drheader", "bad"): {c: A.AGREE for c in ("TR-06", "HD-01", "HD-02", "HD-03", "HD-05")},
    ("nmap", "good"): {"TR-02": A.AGREE, "TR-03": A.AGREE},
    ("nmap", "bad"): {"TR-02": A.AGREE, "TR-03": A.AGREE},
}
TUNDRA_FAILS = {"good": set(), "bad": {"TR-02", "TR-03", "TR-06", "HD-03", "HD-05"}}


@pytest.mark.parametrize(
    "scanner", [Sslyze(), Observatory(), Drheader(), Nmap()], ids=lambda s: s.name
)
def test_an_installed_scanner_judges_the_local_site(judged: Judged, scanner: Scanner) -> None:
    need(scanner)
    kind = judged.site.kind
    statuses = {r.id: r.status for r in judged.report.results}
    assert {c for c, s in statuses.items() if s is Status.FAIL} == TUNDRA_FAILS[kind]
    assert all(s in (Status.PASS, Status.FAIL) for s in statuses.values()), statuses
    started = time.monotonic()
    verdict = run_judge(judged.report, judged.options, scanners=[scanner])
    ran = verdict.scanner(scanner.name)
    assert ran.status is ScannerStatus.RAN, ran.summary
    assert ran.invocations and all(i.returncode is not None for i in ran.invocations)
    assert {c.check: c.agreement for c in verdict.comparisons} == EXPECTED[(scanner.name, kind)]
    assert all(c.evidence for c in verdict.comparisons)
    assert time.monotonic() - started < scanner.timeout


#: What the scanners say about the real panel that tundra does not: drheader's exact-value HSTS
#: rule (tundra sends two years). Anything else here needs a look, not a new entry.
PANEL_STRICTER = {("TR-06", "drheader")}


@pytest.mark.parametrize("database_url", [""], ids=["sqlite"])
def test_the_installed_scanners_on_the_real_panel(services: Any) -> None:
    scanners = [s for s in (Sslyze(), Observatory(), Drheader(), Nmap()) if _installed(s)]
    if not scanners:
        need(Sslyze())
    with real_panel(services) as panel:
        options = RunOptions(
            url=panel.url,
            ca_file=panel.ca,
            http_port=panel.http_port,
            sections=("transport", "headers"),
        )
        report = run(options)
        verdict = run_judge(report, options, scanners=scanners)
    assert report.exit_code == 0, [
        (r.id, r.summary) for r in report.results if r.status is not Status.PASS
    ]
    for scanner in verdict.scanners:
        assert scanner.status is ScannerStatus.RAN, scanner.summary
    stricter = {(c.check, c.scanner) for c in verdict.needs_review()}
    assert stricter <= PANEL_STRICTER, [c.to_dict() for c in verdict.needs_review()]
    assert verdict.counts()["agree"] >= 2 * len(scanners)


def test_systemd_analyze_judges_the_shipped_units() -> None:
    scanner = SystemdAnalyze()
    need(scanner)
    if not scanner.units():
        pytest.fail("deploy/systemd has no unit in this tree")
    url = f"https://127.0.0.1:{closed_port()}"
    report = report_of(url, result("ST-03", Status.PASS, "units within their thresholds"))
    options = RunOptions(url=url, local=True)
    verdict = run_judge(report, options, scanners=[scanner])
    assert verdict.scanner("systemd-analyze").status is ScannerStatus.RAN
    (comparison,) = verdict.comparisons
    assert comparison.agreement is A.AGREE
    assert any(line.startswith("tundra.service: exposure ") for line in comparison.evidence)
    remote = run_judge(report, RunOptions(url=url), scanners=[scanner])
    assert remote.scanner("systemd-analyze").status is ScannerStatus.NOT_APPLICABLE
    assert "--local" in remote.scanner("systemd-analyze").summary


def test_nmap_probes_the_service_ports_tundra_probed() -> None:
    scanner = Nmap()
    need(scanner)
    closed = closed_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        open_port = listener.getsockname()[1]
        probes = {
            "127.0.0.1": [
                {"port": open_port, "kind": "valkey", "state": "open"},
                {"port": closed, "kind": "postgresql", "state": "refused"},
            ]
        }
        url = f"https://127.0.0.1:{closed_port()}"
        failing = report_of(url, result("NX-02", Status.FAIL, "valkey open", probes=probes))
        verdict = run_judge(failing, RunOptions(url=url), scanners=[scanner])
    (comparison,) = verdict.comparisons
    assert comparison.agreement is A.AGREE and comparison.scanner_verdict == "fail"
    assert any(line.startswith(f"127.0.0.1:{open_port}/tcp open") for line in comparison.evidence)
    only_closed = {"127.0.0.1": [probes["127.0.0.1"][1]]}
    passing = report_of(url, result("NX-02", Status.PASS, "refused", probes=only_closed))
    verdict = run_judge(passing, RunOptions(url=url), scanners=[scanner])
    assert [c.agreement for c in verdict.comparisons] == [A.AGREE]


# --- robustness: missing, crashing, hanging, off-target ----------------------------------------

EVERY_SCANNER_CHECK = ("TR-02", "TR-06", "HD-03", "NX-02", "ST-03")


def test_a_path_without_scanners_reports_each_as_not_installed(tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{closed_port()}"
    report = report_of(url, *(result(c, Status.PASS) for c in EVERY_SCANNER_CHECK))
    verdict = run_judge(report, RunOptions(url=url, local=True), path=str(tmp_path))
    assert [s.status for s in verdict.scanners] == [ScannerStatus.NOT_INSTALLED] * 5
    assert verdict.scanner("nmap").summary == (
        "not installed (nmap is not on PATH): apt-get install nmap"
    )
    assert verdict.comparisons == ()
    assert report.exit_code == 0
    none_relevant = report_of(url, result("AU-01", Status.FAIL))
    idle = run_judge(none_relevant, RunOptions(url=url), path=str(tmp_path))
    assert {s.status for s in idle.scanners} == {ScannerStatus.NOT_APPLICABLE}


def _fake(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_crashing_garbled_and_hanging_scanners_are_their_own_errors(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sleep = shutil.which("sleep")
    assert sleep is not None
    pid_file = tmp_path / "child.pid"
    crash = "echo 'Traceback (most recent call last):' >&2\necho 'RuntimeError: boom' >&2\nexit 3\n"
    _fake(bin_dir, "sslyze", crash)
    _fake(bin_dir, "drheader", "echo 'this is not JSON'\n")
    down = '{"error": "The site seems to be down."}'
    _fake(bin_dir, "mdn-http-observatory-scan", f"echo '{down}'\nexit 1\n")
    _fake(bin_dir, "nmap", f"{sleep} 600 &\necho $! > {pid_file}\nwait\n")
    _fake(bin_dir, "systemd-analyze", "exit 0\n")
    url = f"https://127.0.0.1:{closed_port()}"
    report = report_of(url, *(result(c, Status.FAIL) for c in EVERY_SCANNER_CHECK))
    started = time.monotonic()
    verdict = run_judge(report, RunOptions(url=url, local=True), path=str(bin_dir), timeout=2.0)
    elapsed = time.monotonic() - started
    summaries = {s.name: s.summary for s in verdict.scanners}
    assert {s.status for s in verdict.scanners} == {ScannerStatus.ERROR}, summaries
    assert summaries["sslyze"].startswith("error: sslyze exited 3: Traceback")
    assert summaries["sslyze"].endswith("RuntimeError: boom")
    assert summaries["drheader"] == "error: drheader gave no JSON: this is not JSON"
    assert summaries["observatory"] == "error: the Observatory failed: The site seems to be down."
    assert summaries["nmap"].startswith("error: timed out after 2s: ")
    assert summaries["systemd-analyze"] == "error: systemd-analyze printed no exposure level"
    assert elapsed < 10, f"the hanging scanner held the judge for {elapsed:.1f}s"
    assert verdict.comparisons == ()
    assert report.exit_code == 1  # tundra's, untouched
    # The whole process group of the hanging scanner is gone, its child included.
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    (nmap_call,) = verdict.scanner("nmap").invocations
    assert nmap_call.returncode is None  # killed, not exited


def test_a_hung_scanner_whose_child_escaped_its_group_does_not_hold_the_judge(
    tmp_path: Path,
) -> None:
    setsid, sleep = shutil.which("setsid"), shutil.which("sleep")
    if setsid is None or sleep is None:
        pytest.fail("setsid and sleep (util-linux, coreutils) are part of every Debian system")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pid_file = tmp_path / "escaped.pid"
    # The child starts its own session (out of reach of the group kill) and keeps stdout open.
    _fake(bin_dir, "nmap", f"{setsid} {sleep} 600 &\necho $! > {pid_file}\n{sleep} 600\n")
    url = f"https://127.0.0.1:{closed_port()}"
    report = report_of(url, result("TR-02", Status.PASS))
    started = time.monotonic()
    try:
        verdict = run_judge(
            report, RunOptions(url=url), scanners=[Nmap()], path=str(bin_dir), timeout=1.0
        )
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert time.monotonic() - started < 15
    assert verdict.scanner("nmap").summary.startswith("error: timed out after 1s")


def test_an_adapter_that_cannot_read_the_output_is_the_scanners_error(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    certinfo = {"status": "COMPLETED", "result": {"certificate_deployments": [{}]}}
    document = {
        "server_scan_results": [
            {"connectivity_status": "COMPLETED", "scan_result": {"certificate_info": certinfo}}
        ]
    }
    # sslyze writes its JSON to the file named by --json_out=FILE (the first argument).
    _fake(bin_dir, "sslyze", f"echo '{json.dumps(document)}' > \"${{1#--json_out=}}\"\n")
    url = f"https://127.0.0.1:{closed_port()}"
    report = report_of(url, result("TR-04", Status.PASS))
    verdict = run_judge(report, RunOptions(url=url), scanners=[Sslyze()], path=str(bin_dir))
    assert verdict.scanner("sslyze").summary == (
        "error: the adapter crashed: KeyError: 'received_certificate_chain'"
    )


class _Redirect(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        port = self.headers.get("Host", "").rsplit(":", 1)[-1]
        self.send_response(302)
        self.send_header("Location", f"https://localhost:{port}/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_observatory_is_not_started_when_it_would_leave_the_target(tmp_path: Path) -> None:
    issued = StrictPki(tmp_path / "pki").issue("redirect")
    context: ssl.SSLContext = tls_server_context(issued)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "ran"
    _fake(bin_dir, "mdn-http-observatory-scan", f"touch {marker}\n")
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}"
        report = report_of(url, result("HD-03", Status.PASS))
        verdict = run_judge(
            report, RunOptions(url=url), scanners=[Observatory()], path=str(bin_dir)
        )
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    observatory = verdict.scanner("observatory")
    assert observatory.status is ScannerStatus.NOT_APPLICABLE
    assert "would leave the target" in observatory.summary
    assert f"redirects to https://localhost:{server.server_address[1]}/elsewhere" in (
        observatory.summary
    )
    assert not marker.exists() and observatory.invocations == ()


# --- the CLI -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment("bad", tmp_path_factory.mktemp("judge-cli")) as site:
        yield site


def _cli(tmp_path: Path, site: Deployment, *extra: str, path: str | None = None) -> Any:
    env = {"TUNDRA_HOME": str(tmp_path / "home"), "PATH": path or os.environ.get("PATH", "")}
    argv = ["acceptance", "run", "--url", site.url, "--ca-file", str(site.ca), "--remote"]
    return CliRunner().invoke(cli, [*argv, "--judge", *extra], env=env)


def test_cli_judge_without_scanners_keeps_the_exit_code_and_the_schema(
    tmp_path: Path, bad_site: Deployment
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = _cli(tmp_path, bad_site, "--check", "TR-02", "--format", "json", path=str(empty))
    assert out.exit_code == 1, out.output  # TR-02 fails: tundra's verdict, judge or not
    document = json.loads(out.stdout)
    jsonschema.validate(document, load_schema())
    judge = document["judge"]
    assert {s["status"] for s in judge["scanners"]} == {"not_installed", "not_applicable"}
    assert {s["name"] for s in judge["scanners"] if s["status"] == "not_installed"} == {
        "sslyze",
        "nmap",
    }
    assert judge["comparisons"] == []
    assert document["options"]["judge"] is True


def test_cli_judge_reports_agreement_in_json_and_text(tmp_path: Path, bad_site: Deployment) -> None:
    if not any(_installed(s) for s in (Sslyze(), Nmap())):
        need(Sslyze())
    out = _cli(tmp_path, bad_site, "--check", "TR-02", "--check", "HD-05", "--format", "json")
    assert out.exit_code == 1, out.output
    document = json.loads(out.stdout)
    jsonschema.validate(document, load_schema())
    tr02 = [c for c in document["judge"]["comparisons"] if c["check"] == "TR-02"]
    assert tr02 and all(c["agreement"] == "agree" for c in tr02)
    text = _cli(tmp_path, bad_site, "--check", "TR-02")
    assert text.exit_code == 1
    lines = text.stdout.splitlines()
    assert any(line.startswith("judge\tTR-02\t") and "\tagree\t" in line for line in lines)
    footer = [line for line in lines if line.startswith("judge: ")]
    assert footer and "the exit code is tundra's alone" in footer[-1]


def _installed(scanner: Scanner) -> bool:
    try:
        scanner.locate(scanner_env())
    except ScannerMissing:
        return False
    return True


def test_the_judge_object_is_optional_in_the_schema() -> None:
    url = "https://127.0.0.1:1"
    document = report_to_dict(report_of(url, result("TR-02", Status.PASS)))
    assert "judge" not in document
    jsonschema.validate(document, load_schema())
