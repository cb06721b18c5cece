"""JUnit XML in the Jenkins/Ant dialect that CI systems read (GitLab, Jenkins, GitHub actions).

One ``<testsuite>`` per section, one ``<testcase>`` per check named "ID title"; a failure is a
``<failure>``, an error an ``<error>``, a skip a ``<skipped message=reason>``. A waived check
passes (no failure element) and says so in its ``<system-out>``. Every testcase's evidence is
in its ``<system-out>`` as JSON, so the CI page shows why a check passed as well.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable

from tundra.core.acceptance.model import Report, Result, Section, Status
from tundra.core.clock import from_iso

# XML 1.0 cannot carry most control characters, even escaped: drop them.
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _text(value: str) -> str:
    return _INVALID_XML.sub("", value)


def _seconds(results: Iterable[Result]) -> str:
    return f"{sum(r.duration_ms for r in results) / 1000:.3f}"


def _timestamp(iso: str) -> str:
    # The Jenkins XSD wants xs:dateTime without a zone designator.
    return from_iso(iso).strftime("%Y-%m-%dT%H:%M:%S")


def _evidence(result: Result) -> str:
    return _text(json.dumps(result.evidence, indent=2, ensure_ascii=False, sort_keys=True))


def _testcase(parent: ET.Element, result: Result) -> None:
    case = ET.SubElement(
        parent,
        "testcase",
        {
            "name": _text(f"{result.id} {result.title}"),
            "classname": f"tundra.acceptance.{result.section}",
            "time": f"{result.duration_ms / 1000:.3f}",
        },
    )
    message = _text(result.summary)
    if result.status is Status.FAIL:
        failure = ET.SubElement(
            case, "failure", {"message": message, "type": f"severity:{result.severity}"}
        )
        failure.text = _evidence(result)
    elif result.status is Status.ERROR:
        error = ET.SubElement(case, "error", {"message": message, "type": "error"})
        error.text = _evidence(result)
    elif result.status is Status.SKIP:
        ET.SubElement(case, "skipped", {"message": message})
    out = ET.SubElement(case, "system-out")
    lines = [f"{result.id} [{result.severity}] {result.status}: {result.summary}"]
    if result.waiver is not None:
        state = "EXPIRED" if result.waiver.get("expired") else "waived"
        lines.append(
            f"waiver ({state}, expires {result.waiver.get('expires')}): "
            f"{result.waiver.get('justification')}"
        )
    lines.append(_evidence(result))
    out.text = _text("\n".join(lines))


def to_element(report: Report) -> ET.Element:
    results = report.results
    counts = report.counts()
    root = ET.Element(
        "testsuites",
        {
            "name": f"tundra acceptance {report.target}",
            "tests": str(len(results)),
            "failures": str(counts["fail"]),
            "errors": str(counts["error"]),
            "disabled": "0",
            "time": _seconds(results),
        },
    )
    for index, section in enumerate(s for s in Section if any(r.section is s for r in results)):
        members = [r for r in results if r.section is section]
        suite = ET.SubElement(
            root,
            "testsuite",
            {
                "name": str(section),
                "tests": str(len(members)),
                "failures": str(sum(r.status is Status.FAIL for r in members)),
                "errors": str(sum(r.status is Status.ERROR for r in members)),
                "skipped": str(sum(r.status is Status.SKIP for r in members)),
                "disabled": "0",
                "time": _seconds(members),
                "timestamp": _timestamp(report.started_at),
                "id": str(index),
                "package": "tundra.acceptance",
            },
        )
        props = ET.SubElement(suite, "properties")
        for name, value in (
            ("target", report.target),
            ("tool_version", report.tool_version),
            ("fail_on", str(report.fail_on)),
        ):
            ET.SubElement(props, "property", {"name": name, "value": _text(value)})
        for result in members:
            _testcase(suite, result)
    return root


def dumps(report: Report) -> str:
    root = to_element(report)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"
