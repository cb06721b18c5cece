"""Plain HTTP: TR-01 (http redirects to the same URL over https in one hop, no cookie)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from tundra.core.acceptance.context import RunContext
from tundra.core.acceptance.model import (
    Outcome,
    Section,
    Severity,
    errored,
    failed,
    passed,
)
from tundra.core.acceptance.registry import check


@check(
    "TR-01",
    "HTTP redirects to HTTPS in one hop",
    section=Section.TRANSPORT,
    severity=Severity.HIGH,
)
def http_redirects(ctx: RunContext) -> Outcome:
    client = ctx.http()
    problems: list[str] = []
    probes: list[dict[str, Any]] = []
    for path in ("/", "/a/path?q=1"):
        url = ctx.target.http_url(path)
        try:
            response = client.get(url)
        except TimeoutError as exc:
            return errored(f"{url} did not answer: {exc}", exchanges=client.evidence())
        except OSError as exc:
            problems.append(f"{url}: nothing answers ({exc})")
            continue
        location = response.header("location") or ""
        wanted = ctx.target.https_url(path)
        verdicts = []
        if response.status not in (301, 308):
            verdicts.append(f"status {response.status}, not 301/308")
        if len(response.header_values("location")) != 1:
            verdicts.append("not exactly one Location header")
        elif not _same_https_url(location, wanted):
            verdicts.append(f"Location {location!r} is not {wanted!r}")
        if response.header_values("set-cookie"):
            verdicts.append("sets a cookie over plain http")
        probes.append({"url": url, "location": location, "expected": wanted, "problems": verdicts})
        problems.extend(f"{url}: {v}" for v in verdicts)
    evidence = {"probes": probes, "exchanges": client.evidence()}
    if problems:
        return failed("; ".join(problems), **evidence)
    return passed("http answers 301/308 straight to the same URL over https, no cookie", **evidence)


def _same_https_url(location: str, wanted: str) -> bool:
    got, want = urlsplit(location), urlsplit(wanted)
    return (
        got.scheme == "https"
        and (got.hostname or "").lower() == (want.hostname or "").lower()
        and (got.port or 443) == (want.port or 443)
        and (got.path or "/") == (want.path or "/")
        and got.query == want.query
        and not got.fragment
        and not got.username
    )
