"""HSTS: TR-06 (one Strict-Transport-Security header of a year with includeSubDomains on
*every* sampled response) and its strict parser.
"""

from __future__ import annotations

import re

from tundra.core.acceptance.checks.transport.sampling import judge_responses, sample_or_error
from tundra.core.acceptance.context import HttpResponse, RunContext
from tundra.core.acceptance.model import (
    Outcome,
    Section,
    Severity,
    failed,
    passed,
)
from tundra.core.acceptance.registry import check

HSTS_MIN_AGE = 31_536_000

_MAX_AGE = re.compile(r'max-age=(?:(\d+)|"(\d+)")', re.IGNORECASE)


def parse_hsts(value: str) -> tuple[int | None, bool, list[str]]:
    """(max-age, includeSubDomains, problems) of one HSTS value, parsed strictly.

    ``max-age`` must be ``max-age=`` followed directly by digits (RFC 6797 also allows them
    quoted); "max-age=31536000abc", "max-age = 1" or a repeated directive are problems, where
    lax parsers read a number anyway.
    """
    problems: list[str] = []
    seen: set[str] = set()
    max_age: int | None = None
    include = False
    for part in value.split(";"):
        directive = part.strip()
        if not directive:
            continue
        name = directive.split("=", 1)[0].strip().lower()
        if name in seen:
            problems.append(f"directive {name} repeated")
            continue
        seen.add(name)
        if name == "max-age":
            match = _MAX_AGE.fullmatch(directive)
            if match is None:
                problems.append(f"max-age is not max-age=<integer>: {directive!r}")
            else:
                max_age = int(match.group(1) or match.group(2))
        elif name == "includesubdomains":
            if directive.lower() != "includesubdomains":
                problems.append(f"includeSubDomains takes no value: {directive!r}")
            include = True
    if "max-age" not in seen:
        problems.append("no max-age")
    if max_age is not None and max_age < HSTS_MIN_AGE:
        problems.append(f"max-age {max_age} < {HSTS_MIN_AGE}")
    if not include:
        problems.append("no includeSubDomains")
    return max_age, include, problems


@check(
    "TR-06",
    "HSTS of a year with includeSubDomains on every response",
    section=Section.TRANSPORT,
    severity=Severity.HIGH,
    timeout=30.0,
)
def hsts_everywhere(ctx: RunContext) -> Outcome:
    result = sample_or_error(ctx)
    if isinstance(result, Outcome):
        return result

    def judge(response: HttpResponse) -> list[str]:
        values = response.header_values("strict-transport-security")
        if len(values) != 1:
            return [f"{len(values)} Strict-Transport-Security headers (need exactly one)"]
        return parse_hsts(values[0])[2]

    rows, problems = judge_responses(result.responses, judge)
    for row, response in zip(rows, result.responses, strict=True):
        row["hsts"] = response.header_values("strict-transport-security")
    kinds = result.kinds()
    missing = [k for k in ("2xx", "redirect", "401", "404") if k not in kinds]
    evidence = {
        "responses": rows,
        "kinds_sampled": kinds,
        "kinds_not_observed": missing,
        "errors": list(result.errors),
        "minimum_max_age": HSTS_MIN_AGE,
    }
    problems.extend(result.errors)
    if problems:
        return failed("; ".join(problems[:6]), **evidence)
    return passed(
        f"one valid HSTS header on all {len(rows)} sampled responses ({', '.join(sorted(kinds))})",
        **evidence,
    )
