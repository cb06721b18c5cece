"""drheader: security headers of the login page, judged by drheader's default rules.

Run as ``drheader scan single https://HOST:PORT/login --method get --allow-redirects false
[--verify CA] -o json``: one GET of the panel's login page (a real HTML page, no redirect
followed, so nothing but the target is contacted). drheader prints a JSON list of rule
violations (exit 70 when there are some, 0 when none); a connection error is printed as text,
not JSON, which is the scanner's error.

drheader's rules map to checks: ``Content-Security-Policy`` → HD-01 (missing header, bad
``default-src``) and HD-02 (must-avoid sources; a missing header fails both);
``X-Content-Type-Options``, ``X-Frame-Options``, ``Referrer-Policy``,
``Cross-Origin-Opener-Policy`` → HD-03; ``Cache-Control``, ``Pragma`` → HD-04; ``Server``,
``X-Powered-By``, ``X-AspNet-Version``, ``X-Generator`` → HD-05; ``Strict-Transport-Security``
→ TR-06; ``Set-Cookie`` → ID-01. Its other rules (``X-XSS-Protection``, COEP, …) are kept as
unmapped. A check none of whose rules fired passes in drheader's view.

Where drheader is stricter by design: it wants ``Pragma: no-cache`` and ``max-age=0`` next to
``no-store``, no ``Server`` header at all, an HSTS value of exactly ``max-age=31536000``, and
``HttpOnly`` on every cookie; it looks at an anonymous page, where HD-04 and ID-01 look at
authenticated ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

from tundra.core.acceptance.judge.base import Findings, Job, Scanner, ScannerError, Verdict

#: drheader rule (lower case, the part before " - ") -> catalogue checks.
RULES: Final[Mapping[str, tuple[str, ...]]] = {
    "x-content-type-options": ("HD-03",),
    "x-frame-options": ("HD-03",),
    "referrer-policy": ("HD-03",),
    "cross-origin-opener-policy": ("HD-03",),
    "cache-control": ("HD-04",),
    "pragma": ("HD-04",),
    "server": ("HD-05",),
    "x-powered-by": ("HD-05",),
    "x-aspnet-version": ("HD-05",),
    "x-generator": ("HD-05",),
    "strict-transport-security": ("TR-06",),
    "set-cookie": ("ID-01",),
}
PATH: Final = "/login"


def _checks_of(item: Mapping[str, Any]) -> tuple[str, ...]:
    rule = str(item.get("rule", ""))
    header = rule.split(" - ", 1)[0].strip().lower()
    if header == "content-security-policy":
        message = str(item.get("message", "")).lower()
        if "must-avoid" in message:
            return ("HD-02",)
        if " - " not in rule and "not included" in message:
            return ("HD-01", "HD-02")
        return ("HD-01",)
    return RULES.get(header, ())


def describe(item: Mapping[str, Any]) -> str:
    """One violation as an evidence line: rule, message, and what drheader saw and wanted."""
    text = f"{item.get('rule')}: {item.get('message')}"
    for key in ("value", "expected", "avoid", "anomalies"):
        if key in item:
            text += f"; {key} {item[key]!r}"
    return text


def interpret(violations: Sequence[Mapping[str, Any]], *, url: str) -> Findings:
    checks = sorted({c for checks in RULES.values() for c in checks} | {"HD-01", "HD-02"})
    failing: dict[str, list[str]] = {c: [] for c in checks}
    unmapped = []
    for item in violations:
        mapped = _checks_of(item)
        if not mapped:
            unmapped.append(describe(item))
        for check in mapped:
            failing[check].append(describe(item))
    verdicts = tuple(
        Verdict(check, not lines, tuple(lines) or (f"no drheader rule for it fired on GET {url}",))
        for check, lines in failing.items()
    )
    return Findings(verdicts, tuple(unmapped))


def parse_output(stdout: str, stderr: str) -> list[Mapping[str, Any]]:
    try:
        document = json.loads(stdout)
    except ValueError:
        detail = (stderr.strip() or stdout.strip()).splitlines()
        raise ScannerError(
            "drheader gave no JSON: " + (detail[-1] if detail else "no output")
        ) from None
    if not isinstance(document, list) or not all(isinstance(i, Mapping) for i in document):
        raise ScannerError("drheader's JSON is not a list of findings")
    return document


class Drheader(Scanner):
    name: ClassVar[str] = "drheader"
    executable: ClassVar[str] = "drheader"
    checks: ClassVar[frozenset[str]] = frozenset(
        {"HD-01", "HD-02", "HD-03", "HD-04", "HD-05", "TR-06", "ID-01"}
    )
    install_hint: ClassVar[str] = "pip install drheader (into its own virtualenv; put it on PATH)"
    timeout: ClassVar[float] = 30.0
    python_tool: ClassVar[bool] = True

    def command(self, job: Job, tool: str) -> list[str]:
        argv = [tool, "scan", "single", job.target.https_url(PATH)]
        argv += ["--method", "get", "--allow-redirects", "false", "--timeout", "10"]
        if job.options.ca_file is not None:
            argv += ["--verify", str(job.options.ca_file)]
        return [*argv, "-o", "json"]

    def scan(self, job: Job, tool: str) -> Findings:
        # 70 (EX_SOFTWARE) is drheader's "violations found".
        done = job.run(self.command(job, tool), ok_codes=(0, 70))
        url = job.target.https_url(PATH)
        return interpret(parse_output(done.stdout, done.stderr), url=url)
