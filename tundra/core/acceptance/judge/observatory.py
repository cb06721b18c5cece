"""The MDN HTTP Observatory (npm ``@mdn/mdn-http-observatory``), run locally against the target.

The package's command ``mdn-http-observatory-scan HOST`` scans one host and prints JSON: a grade
and ten tests, each with ``pass`` and a result code. It takes a host name only: it fetches
``http://HOST/`` and ``https://HOST/``, follows their redirects, then ``/robots.txt`` and a CORS
preflight on the final URL. A port is given as ``HOST:PORT``, which it then uses for both the
https and the plain-http fetch, so on a non-standard port its redirection test sees no http
site and says nothing about TR-01 (noted, not compared).

It follows redirects to any host. To keep every request on the target, the judge first walks
the same redirect chains itself (``/`` and ``/robots.txt`` over https, ``/`` over http) and does
not start the Observatory when any of them leaves the target's host; the scanner's result then
says which redirect would have.

Trusting ``--ca-file``: the command is a wrapper that sets ``NODE_EXTRA_CA_CERTS`` to a bundle of
its own and runs ``src/scan.js``; with ``--ca-file`` the judge runs ``node src/scan.js`` itself
with ``NODE_EXTRA_CA_CERTS`` set to that file (otherwise the Observatory treats the panel's
certificate as invalid and fails HSTS for it).

Its tests map to checks: ``content-security-policy`` → HD-01 (not implemented, invalid or
duplicate directives) and HD-02 (its pass/fail); ``x-content-type-options``,
``x-frame-options``, ``referrer-policy``, ``cross-origin-resource-policy`` → HD-03;
``cross-origin-resource-sharing`` → HD-06; ``strict-transport-security`` → TR-06; ``cookies``
→ ID-01; ``redirection`` → TR-01 on standard ports; ``subresource-integrity`` has no check.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Final

from tundra.core.acceptance.context import HttpClient
from tundra.core.acceptance.judge.base import (
    Findings,
    Job,
    Scanner,
    ScannerError,
    Verdict,
    authority,
)

TESTS: Final[Mapping[str, str]] = {
    "x-content-type-options": "HD-03",
    "x-frame-options": "HD-03",
    "referrer-policy": "HD-03",
    "cross-origin-resource-policy": "HD-03",
    "cross-origin-resource-sharing": "HD-06",
    "strict-transport-security": "TR-06",
    "cookies": "ID-01",
    "redirection": "TR-01",
}
#: CSP results that mean "no usable CSP header" (HD-01's concern; the rest is HD-02's).
CSP_ABSENT: Final = frozenset(
    {
        "csp-not-implemented",
        "csp-not-implemented-but-reporting-enabled",
        "csp-header-invalid",
        "csp-implemented-but-duplicate-directives",
    }
)
MAX_HOPS: Final = 10


def host_argument(job: Job) -> str:
    return job.target.host if job.target.port == 443 else authority(job.target)


def _line(name: str, test: Mapping[str, Any]) -> str:
    text = f"{name}: {test.get('result')} (pass={str(test.get('pass')).lower()})"
    if name == "strict-transport-security" and test.get("maxAge") is not None:
        text += f"; max-age {test.get('maxAge')}, includeSubDomains {test.get('includeSubDomains')}"
    elif name == "redirection" and test.get("route"):
        text += f"; route {test.get('route')}"
    elif isinstance(test.get("data"), str):
        text += f"; value {test['data']!r}"
    return text


def interpret(document: Mapping[str, Any], *, standard_ports: bool) -> Findings:
    if document.get("error"):
        message = str(document["error"])
        if "hsts-preload.json" in message:
            message += (
                " (the package was installed without its install scripts: create that file "
                "with the content {} — the preload list matters only to public sites)"
            )
        raise ScannerError(f"the Observatory failed: {message}")
    tests = document.get("tests")
    if not isinstance(tests, Mapping):
        raise ScannerError("the Observatory's JSON has no tests")
    by_check: dict[str, list[tuple[bool, str]]] = {}
    unmapped: list[str] = []
    notes: list[str] = []
    for name, test in tests.items():
        if not isinstance(test, Mapping):
            continue
        ok = test.get("pass") is True
        line = _line(name, test)
        if name == "content-security-policy":
            by_check.setdefault("HD-01", []).append((test.get("result") not in CSP_ABSENT, line))
            by_check.setdefault("HD-02", []).append((ok, line))
            continue
        check = TESTS.get(name)
        if check == "TR-01" and not standard_ports:
            notes.append(
                "TR-01 not compared: on a non-standard port the Observatory fetches plain http "
                f"from the https port itself ({line})"
            )
            continue
        if check is None:
            if not ok:
                unmapped.append(line)
            continue
        by_check.setdefault(check, []).append((ok, line))
    verdicts = tuple(
        Verdict(
            check,
            all(ok for ok, _ in entries),
            # The failing tests first: the first line is what a reader sees in the table.
            tuple(line for ok, line in sorted(entries, key=lambda e: e[0])),
        )
        for check, entries in sorted(by_check.items())
    )
    scan = document.get("scan") if isinstance(document.get("scan"), Mapping) else {}
    assert isinstance(scan, Mapping)
    notes.append(f"Observatory grade {scan.get('grade')} (score {scan.get('score')})")
    return Findings(verdicts, tuple(unmapped), tuple(notes))


def off_target_redirects(job: Job) -> list[str]:
    """Redirects on the Observatory's paths that leave the target's host (empty: none)."""
    hostarg = host_argument(job)
    starts = [f"https://{hostarg}/", f"https://{hostarg}/robots.txt", f"http://{hostarg}/"]
    wanted = job.target.host.lower()
    leaving = []
    for start in starts:
        url = start
        for _ in range(MAX_HOPS):
            client = HttpClient(url, verify=False, timeout=max(0.5, min(5.0, job.remaining())))
            try:
                response = client.get(url)
            except (OSError, ValueError, http.client.HTTPException):
                break  # nothing answers there: the Observatory gets nothing either
            location = response.header("location")
            if response.status not in (301, 302, 303, 307, 308) or not location:
                break
            url = urllib.parse.urljoin(url, location)
            host = (urllib.parse.urlsplit(url).hostname or "").lower()
            if host != wanted:
                leaving.append(f"{start} redirects to {url}")
                break
    return leaving


def _package_dir(tool: str) -> Path | None:
    """The npm package behind the command (its ``bin/wrapper.js`` symlink), if it is one."""
    real = Path(os.path.realpath(tool))
    package = real.parent.parent
    return package if (package / "src" / "scan.js").is_file() else None


class Observatory(Scanner):
    name: ClassVar[str] = "observatory"
    executable: ClassVar[str] = "mdn-http-observatory-scan"
    checks: ClassVar[frozenset[str]] = frozenset(
        {"TR-01", "TR-06", "HD-01", "HD-02", "HD-03", "HD-06", "ID-01"}
    )
    install_hint: ClassVar[str] = (
        "npm install -g --ignore-scripts @mdn/mdn-http-observatory, then write {} to its "
        "conf/hsts-preload.json (its install scripts download lists from the internet)"
    )
    timeout: ClassVar[float] = 45.0

    def not_applicable(self, job: Job) -> str | None:
        leaving = off_target_redirects(job)
        if leaving:
            return (
                "not run: it follows redirects to any host and would leave the target ("
                + "; ".join(leaving)
                + ")"
            )
        return None

    def command(self, job: Job, tool: str) -> tuple[list[str], dict[str, str]]:
        env = dict(job.env)
        package = _package_dir(tool)
        node = shutil.which("node", path=env.get("PATH", ""))
        if job.options.ca_file is not None and package is not None and node is not None:
            env["NODE_EXTRA_CA_CERTS"] = str(job.options.ca_file)
            return [node, str(package / "src" / "scan.js"), host_argument(job)], env
        return [tool, host_argument(job)], env

    def scan(self, job: Job, tool: str) -> Findings:
        argv, env = self.command(job, tool)
        # Exit 1 comes with {"error": ...} on stdout, which interpret() reports.
        done = job.run(argv, ok_codes=(0, 1), env=env)
        try:
            document = json.loads(done.stdout)
        except ValueError:
            lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
            raise ScannerError(
                "the Observatory gave no JSON: " + (lines[-1] if lines else "no output")
            ) from None
        if not isinstance(document, Mapping):
            raise ScannerError("the Observatory's output is not a JSON object")
        standard = job.target.port == 443 and job.target.http_port == 80
        findings = interpret(document, standard_ports=standard)
        package = _package_dir(tool)
        version = None
        if package is not None:
            try:
                version = json.loads((package / "package.json").read_text())["version"]
            except (OSError, ValueError, KeyError):
                version = None
        return Findings(findings.verdicts, findings.unmapped, findings.notes, version)
