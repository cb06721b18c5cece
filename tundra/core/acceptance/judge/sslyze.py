"""sslyze: TLS versions, suites, groups and the certificate, judged by Mozilla's "modern" profile.

sslyze is run as ``sslyze --json_out=FILE --mozilla_config=modern --early_data --http_headers
[--certinfo_ca_file CA] HOST:PORT``: the JSON file holds what it observed, and its console
output ends with its own compliance verdict against Mozilla's "modern" configuration (sslyze
only runs that check when the JSON does not go to stdout, hence the file). That verdict is
sslyze's opinion; each of its criteria maps to a check:

- ``tls_versions`` → TR-02; ``ciphersuites``, ``ciphers``, ``tls_curves``, ``ecdh_param_size``,
  ``dh_param_size`` → TR-03; the ``certificate_*`` criteria, ``rsa_key_size`` and
  ``maximum_certificate_lifespan`` → TR-04; ``tls_vulnerability_compression`` → TR-05. The other
  vulnerability criteria (Heartbleed, ROBOT, …) have no catalogue check: kept as unmapped.
- Facts the profile does not judge: TLS compression or TLS 1.3 early data accepted → TR-05
  fails; no HSTS header on ``/`` → TR-06 fails (sslyze has no max-age threshold).

sslyze connects only to the target (it follows a redirect only to the same server).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Final

from tundra.core.acceptance.judge.base import (
    Findings,
    Job,
    Scanner,
    ScannerError,
    Verdict,
    authority,
)

CRITERIA: Final[Mapping[str, str]] = {
    "tls_versions": "TR-02",
    "ciphersuites": "TR-03",
    "ciphers": "TR-03",
    "tls_curves": "TR-03",
    "ecdh_param_size": "TR-03",
    "dh_param_size": "TR-03",
    "certificate_path_validation": "TR-04",
    "certificate_types": "TR-04",
    "certificate_signatures": "TR-04",
    "certificate_curves": "TR-04",
    "rsa_key_size": "TR-04",
    "maximum_certificate_lifespan": "TR-04",
    "tls_vulnerability_compression": "TR-05",
}
_VERSIONS: Final = (
    ("ssl_2_0_cipher_suites", "SSLv2"),
    ("ssl_3_0_cipher_suites", "SSLv3"),
    ("tls_1_0_cipher_suites", "TLSv1.0"),
    ("tls_1_1_cipher_suites", "TLSv1.1"),
    ("tls_1_2_cipher_suites", "TLSv1.2"),
    ("tls_1_3_cipher_suites", "TLSv1.3"),
)
_STATUS = re.compile(r"^\s*\S+: (OK - Compliant|FAILED - Not compliant|ERROR - .*?)\.?\s*$")
_ISSUE = re.compile(r"^\s+\* ([a-z0-9_]+): (.*)$")


def parse_compliance(console: str) -> tuple[str | None, dict[str, str]]:
    """sslyze's compliance section: ("ok" | "failed" | "error" | None, criterion -> text)."""
    _, found, section = console.partition("COMPLIANCE AGAINST TLS CONFIGURATION")
    if not found:
        return None, {}
    status: str | None = None
    issues: dict[str, str] = {}
    for line in section.splitlines():
        match = _STATUS.match(line)
        if match:
            status = match.group(1).split(" ", 1)[0].lower()
            continue
        issue = _ISSUE.match(line)
        if issue and status == "failed":
            issues[issue.group(1)] = issue.group(2).strip()
    return status, issues


def _result(scan: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    attempt = scan.get(name) or {}
    if attempt.get("status") != "COMPLETED":
        return None
    result = attempt.get("result")
    return result if isinstance(result, Mapping) else None


def server_result(document: Mapping[str, Any]) -> Mapping[str, Any]:
    """The one server's scan result; a connectivity failure is the scanner's error."""
    servers = document.get("server_scan_results") or []
    if not servers:
        invalid = document.get("invalid_server_strings") or []
        raise ScannerError(f"sslyze scanned no server (invalid target: {invalid})")
    server = servers[0]
    if server.get("connectivity_status") != "COMPLETED":
        trace = str(server.get("connectivity_error_trace") or "").strip().splitlines()
        raise ScannerError("sslyze could not connect: " + (trace[-1] if trace else "no detail"))
    scan = server.get("scan_result")
    if not isinstance(scan, Mapping):
        raise ScannerError("sslyze gave no scan result")
    return scan


def observations(scan: Mapping[str, Any]) -> dict[str, list[str]]:
    """Evidence lines per check from what sslyze observed (independent of the verdict)."""
    lines: dict[str, list[str]] = {}
    supported = []
    for key, label in _VERSIONS:
        result = _result(scan, key)
        if result is None:
            continue
        names = [s["cipher_suite"]["name"] for s in result.get("accepted_cipher_suites", [])]
        if names:
            supported.append(label)
            lines.setdefault("TR-03", []).append(f"{label} suites accepted: {', '.join(names)}")
    lines["TR-02"] = [f"versions accepted: {', '.join(supported) or 'none'}"]
    curves = _result(scan, "elliptic_curves")
    if curves is not None:
        names = [c["name"] for c in curves.get("supported_curves") or []]
        lines.setdefault("TR-03", []).append(f"groups accepted: {', '.join(names) or 'none'}")
    certinfo = _result(scan, "certificate_info")
    for deployment in (certinfo or {}).get("certificate_deployments", [])[:1]:
        leaf: Mapping[str, Any] = deployment["received_certificate_chain"][0]
        public_key: Mapping[str, Any] = leaf.get("public_key") or {}
        lines["TR-04"] = [
            f"leaf {leaf.get('subject', {}).get('rfc4514_string')}: "
            f"{public_key.get('algorithm')} {public_key.get('key_size')} bits, "
            f"{(leaf.get('signature_algorithm_oid') or {}).get('name')}, "
            f"valid {leaf.get('not_valid_before')} to {leaf.get('not_valid_after')}"
        ]
        trusted = [
            r["trust_store"]["name"]
            for r in deployment.get("path_validation_results", [])
            if r.get("was_validation_successful")
        ]
        errors = {
            str(r.get("validation_error"))
            for r in deployment.get("path_validation_results", [])
            if not r.get("was_validation_successful")
        }
        lines["TR-04"].append(
            f"chain validates against: {', '.join(trusted)}"
            if trusted
            else f"chain validates against no trust store: {'; '.join(sorted(errors))}"
        )
    return lines


def facts(scan: Mapping[str, Any]) -> list[Verdict]:
    """TR-05 and TR-06 from sslyze's observations (its profile does not judge them)."""
    verdicts = []
    compression = _result(scan, "tls_compression")
    early = _result(scan, "tls_1_3_early_data")
    if compression is not None or early is not None:
        problems = []
        evidence = []
        if compression is not None:
            evidence.append(f"compression supported: {compression.get('supports_compression')}")
            if compression.get("supports_compression"):
                problems.append("compression")
        if early is not None:
            evidence.append(f"TLS 1.3 early data supported: {early.get('supports_early_data')}")
            if early.get("supports_early_data"):
                problems.append("early data")
        verdicts.append(Verdict("TR-05", not problems, tuple(evidence)))
    headers = _result(scan, "http_headers")
    if headers is not None:
        hsts = headers.get("strict_transport_security_header")
        where = headers.get("http_path_redirected_to") or "/"
        if hsts is None:
            verdicts.append(Verdict("TR-06", False, (f"no HSTS header on {where}",)))
        else:
            verdicts.append(
                Verdict(
                    "TR-06",
                    True,
                    (
                        f"HSTS on {where}: max-age={hsts.get('max_age')}, "
                        f"includeSubDomains={hsts.get('include_subdomains')}",
                    ),
                )
            )
    return verdicts


def interpret(document: Mapping[str, Any], console: str) -> Findings:
    """sslyze's JSON document and console output → verdicts per check."""
    scan = server_result(document)
    status, issues = parse_compliance(console)
    seen = observations(scan)
    verdicts: list[Verdict] = []
    unmapped: list[str] = []
    notes: list[str] = []
    observed = {v.check: v for v in facts(scan)}
    if status in ("ok", "failed"):
        failing: dict[str, list[str]] = {}
        for criterion, text in issues.items():
            check = CRITERIA.get(criterion)
            if check is None:
                unmapped.append(f"{criterion}: {text}")
            else:
                failing.setdefault(check, []).append(f"{criterion}: {text}")
        for check in ("TR-02", "TR-03", "TR-04"):
            bad = failing.get(check, [])
            verdicts.append(Verdict(check, not bad, (*bad, *seen.get(check, []))))
        compression = observed.pop("TR-05", None)
        if "TR-05" in failing:
            extra = compression.evidence if compression else ()
            verdicts.append(Verdict("TR-05", False, (*failing["TR-05"], *extra)))
        elif compression is not None:
            verdicts.append(compression)
    else:
        notes.append(
            "sslyze's Mozilla compliance check did not run"
            + (" (a scan command failed)" if status == "error" else "")
            + ": no verdict on TR-02, TR-03, TR-04"
        )
    verdicts.extend(observed.values())
    return Findings(tuple(verdicts), tuple(unmapped), tuple(notes), document.get("sslyze_version"))


class Sslyze(Scanner):
    name: ClassVar[str] = "sslyze"
    executable: ClassVar[str] = "sslyze"
    checks: ClassVar[frozenset[str]] = frozenset({"TR-02", "TR-03", "TR-04", "TR-05", "TR-06"})
    install_hint: ClassVar[str] = "pip install sslyze (into its own virtualenv; put sslyze on PATH)"
    timeout: ClassVar[float] = 90.0
    python_tool: ClassVar[bool] = True

    def command(self, job: Job, tool: str, json_out: str) -> list[str]:
        argv = [tool, f"--json_out={json_out}", "--mozilla_config=modern"]
        argv += ["--early_data", "--http_headers"]
        if job.options.ca_file is not None:
            argv.append(f"--certinfo_ca_file={job.options.ca_file}")
        argv.append(authority(job.target))
        return argv

    def scan(self, job: Job, tool: str) -> Findings:
        out = job.temporary_file(".json")
        # Exit 1 is sslyze's "not compliant" (its verdict, read from the output).
        done = job.run(self.command(job, tool, str(out)), ok_codes=(0, 1))
        try:
            document = json.loads(out.read_text(encoding="utf-8") or "null")
        except (OSError, ValueError) as exc:
            raise ScannerError(f"sslyze wrote no readable JSON: {exc}") from None
        if not isinstance(document, Mapping):
            raise ScannerError("sslyze wrote no JSON report: " + _last_line(done.stdout))
        return interpret(document, done.stdout)


def _last_line(text: str) -> str:
    lines: Iterable[str] = (line.strip() for line in text.splitlines())
    kept = [line for line in lines if line]
    return kept[-1] if kept else "no output"
