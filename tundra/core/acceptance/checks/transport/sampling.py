"""The shared HTTPS sample: the responses TR-06 and the header checks judge, fetched once per run,
and :func:`judge_responses`, which applies one verdict to each of them.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tundra.core.acceptance.context import HttpClient, HttpResponse, RunContext
from tundra.core.acceptance.model import Outcome, errored

#: Probe paths of the shared sample: the app, the login page, an API path (401 without a token),
#: a path that cannot exist (404), and tundra's TOTP step (a redirect without a pending login).
SAMPLE_PATHS = ("/", "/login", "/api/v1/servers", "/login/totp")


@dataclass(frozen=True)
class Sample:
    """The responses every header check judges, fetched once per run."""

    responses: tuple[HttpResponse, ...]
    errors: tuple[str, ...]
    exchanges: tuple[dict[str, Any], ...]

    def kinds(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for r in self.responses:
            out.setdefault(_kind(r.status), []).append(urlsplit(r.url).path)
        return out


def _kind(status: int) -> str:
    if status in (401, 404):
        return str(status)
    return {2: "2xx", 3: "redirect", 4: "4xx", 5: "5xx"}.get(status // 100, str(status))


def sample(ctx: RunContext) -> Sample:
    """GET the sample paths (and ``--page`` extras) once per run, without following redirects."""

    def fetch() -> Sample:
        client: HttpClient = ctx.http()
        missing = f"/tundra-acceptance-missing-{secrets.token_hex(4)}"
        paths = [*SAMPLE_PATHS, missing, *ctx.options.pages]
        responses: list[HttpResponse] = []
        errors: list[str] = []
        for path in dict.fromkeys(paths):
            try:
                responses.append(client.get(path))
            except ssl.SSLCertVerificationError as exc:
                errors.append(f"{path}: certificate verification failed ({exc.verify_message})")
            except (OSError, ssl.SSLError) as exc:
                errors.append(f"{path}: {type(exc).__name__}: {exc}")
        return Sample(tuple(responses), tuple(errors), tuple(client.evidence()))

    return ctx.memo("transport.http_sample", fetch)


def sample_or_error(ctx: RunContext) -> Sample | Outcome:
    result = sample(ctx)
    if result.errors and not result.responses:
        return errored(
            "no https response: " + "; ".join(result.errors[:3]),
            errors=list(result.errors),
            hint="give --ca-file when the panel uses its internal CA",
        )
    return result


def judge_responses(
    responses: Sequence[HttpResponse], judge: Callable[[HttpResponse], list[str]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Apply ``judge`` to each response: per-response evidence and the flat problem list."""
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for response in responses:
        found = judge(response)
        path = urlsplit(response.url).path or "/"
        rows.append({"path": path, "status": response.status, "problems": found})
        problems.extend(f"{path} ({response.status}): {p}" for p in found)
    return rows, problems
