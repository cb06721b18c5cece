"""The JSON report: a stable schema (``schemas/report.schema.json``), also the baseline format.

Additive changes keep ``schema_version``; removing or changing the meaning of a field bumps it.
The optional top-level ``judge`` object (``--judge``: the public scanners' verdicts next to
tundra's) is present only when the judge ran.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import TYPE_CHECKING, Any

from tundra.core.acceptance.model import Report

if TYPE_CHECKING:
    from tundra.core.acceptance.judge import JudgeReport

SCHEMA_VERSION = 1
SCHEMA_RESOURCE = "schemas/report.schema.json"


def report_to_dict(report: Report, *, judge: JudgeReport | None = None) -> dict[str, Any]:
    document = {
        "schema_version": SCHEMA_VERSION,
        "tool": "tundra",
        "tool_version": report.tool_version,
        "target": report.target,
        "started_at": report.started_at,
        "finished_at": report.finished_at,
        "options": report.options,
        "fail_on": str(report.fail_on),
        "exit_code": report.exit_code,
        "counts": report.counts(),
        "notes": list(report.notes),
        "baseline": report.baseline,
        "checks": [result.to_dict() for result in report.results],
    }
    if judge is not None:
        document["judge"] = judge.to_dict()
    return document


def dumps(report: Report, *, indent: int | None = 2, judge: JudgeReport | None = None) -> str:
    document = report_to_dict(report, judge=judge)
    return json.dumps(document, indent=indent, ensure_ascii=False) + "\n"


def load_schema() -> dict[str, Any]:
    """The JSON Schema of the report (package data next to this package)."""
    package = resources.files("tundra.core.acceptance")
    schema: dict[str, Any] = json.loads(package.joinpath(SCHEMA_RESOURCE).read_text("utf-8"))
    return schema
