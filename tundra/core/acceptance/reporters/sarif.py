"""SARIF 2.1.0: one run, one rule per check, one result per check.

Result kinds: pass → ``pass``, fail → ``fail`` (level from the severity), waived → ``fail``
with an accepted external suppression carrying the justification, error → ``open`` (evaluated,
but not decidable), skip → ``notApplicable``. The target is a logical location (there is no
source file: the subject is a live deployment). Evidence is in each result's ``properties``.
"""

from __future__ import annotations

import json
from typing import Any

from tundra.core.acceptance.model import Report, Result, Severity, Status

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"

_LEVEL = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}
# GitHub code scanning ranks by this property (0.0-10.0).
_SECURITY_SEVERITY = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "3.0",
    Severity.INFO: "0.0",
}
_KIND = {
    Status.PASS: "pass",
    Status.FAIL: "fail",
    Status.WAIVED: "fail",
    Status.ERROR: "open",
    Status.SKIP: "notApplicable",
}


def _rule(result: Result) -> dict[str, Any]:
    return {
        "id": result.id,
        "name": result.title,
        "shortDescription": {"text": f"{result.id} {result.title}"},
        "help": {"text": f"See docs/acceptance.md, check {result.id}."},
        "defaultConfiguration": {"level": _LEVEL[result.severity]},
        "properties": {
            "section": str(result.section),
            "severity": str(result.severity),
            "security-severity": _SECURITY_SEVERITY[result.severity],
            "tags": ["security", f"acceptance/{result.section}"],
        },
    }


def _result(result: Result, index: int, target: str) -> dict[str, Any]:
    kind = _KIND[result.status]
    entry: dict[str, Any] = {
        "ruleId": result.id,
        "ruleIndex": index,
        "kind": kind,
        "level": _LEVEL[result.severity] if kind == "fail" else "none",
        "message": {"text": f"{result.id} {result.status}: {result.summary}"},
        "locations": [
            {
                "logicalLocations": [
                    {
                        "name": result.id,
                        "fullyQualifiedName": f"{target}#{result.id}",
                        "kind": "resource",
                    }
                ]
            }
        ],
        "properties": {
            "status": str(result.status),
            "duration_ms": result.duration_ms,
            "evidence": result.evidence,
        },
    }
    if result.status is Status.WAIVED and result.waiver is not None:
        entry["suppressions"] = [
            {
                "kind": "external",
                "status": "accepted",
                "justification": str(result.waiver.get("justification", "")),
                "properties": {"expires": result.waiver.get("expires")},
            }
        ]
    return entry


def to_dict(report: Report) -> dict[str, Any]:
    results = report.results
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "tundra-acceptance",
                        "version": report.tool_version,
                        "semanticVersion": report.tool_version,
                        "rules": [_rule(r) for r in results],
                    }
                },
                "invocations": [
                    {
                        "executionSuccessful": not any(r.status is Status.ERROR for r in results),
                        "startTimeUtc": report.started_at,
                        "endTimeUtc": report.finished_at,
                        "exitCode": report.exit_code,
                        "toolExecutionNotifications": [
                            {"level": "warning", "message": {"text": note}} for note in report.notes
                        ],
                    }
                ],
                "automationDetails": {"id": f"tundra-acceptance/{report.target}/"},
                "results": [_result(r, i, report.target) for i, r in enumerate(results)],
                "properties": {"target": report.target, "fail_on": str(report.fail_on)},
            }
        ],
    }


def dumps(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2, ensure_ascii=False) + "\n"
