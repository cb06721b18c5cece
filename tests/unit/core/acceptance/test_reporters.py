"""The JSON, JUnit and SARIF reports validate against their schemas, and say the right things.

- JSON: jsonschema against the schema shipped in the package (schemas/report.schema.json).
- JUnit: against tests/fixtures/junit-jenkins.xsd, with the small XSD reader below (no lxml or
  xmlschema here): it reads the element declarations of that file and checks element order and
  occurrences, required, unknown and typed attributes, and text in non-mixed elements.
- SARIF: jsonschema against tests/fixtures/sarif-2.1.0-subset.schema.json (see its $comment).

Each schema is also shown to reject a broken document, so a validator that accepts anything
cannot pass these tests.
"""

from __future__ import annotations

import copy
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tundra.core.acceptance import runner
from tundra.core.acceptance.baseline import load_baseline
from tundra.core.acceptance.context import RunOptions
from tundra.core.acceptance.model import Report, Result, Section, Severity, Status
from tundra.core.acceptance.registry import Registry
from tundra.core.acceptance.reporters import json as json_reporter
from tundra.core.acceptance.reporters import junit, sarif
from tundra.core.acceptance.waivers import Waiver

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"
XS = "{http://www.w3.org/2001/XMLSchema}"


def result(
    check_id: str, section: Section, status: Status, summary: str = "", **extra: Any
) -> Result:
    return Result(
        id=check_id,
        title=f"Title of {check_id} <&>",
        section=section,
        severity=extra.pop("severity", Severity.HIGH),
        status=status,
        summary=summary or f"{status} summary",
        evidence=extra.pop("evidence", {"probe": {"status": 200, "headers": [["a", "b"]]}}),
        duration_ms=extra.pop("duration_ms", 12),
        waiver=extra.pop("waiver", None),
    )


WAIVER = {
    "check": "HD-03",
    "justification": "the proxy adds it; tracked in OPS-7",
    "expires": "2999-01-01",
    "owner": None,
    "expired": False,
    "source": "waivers.toml entry 1 (line 1)",
}


@pytest.fixture
def report() -> Report:
    return Report(
        tool_version="0.1.0",
        target="https://[::1]:8443",
        started_at="2026-05-01T10:00:00.000000Z",
        finished_at="2026-05-01T10:00:02.500000Z",
        options=RunOptions(url="https://[::1]:8443", user="acc", password="secret").summary(),
        results=(
            result("TR-01", Section.TRANSPORT, Status.PASS),
            result(
                "TR-02",
                Section.TRANSPORT,
                Status.FAIL,
                "TLS 1.2 accepted\x07 ✗",
                severity=Severity.CRITICAL,
            ),
            result("HD-03", Section.HEADERS, Status.WAIVED, waiver=WAIVER),
            result(
                "HD-04",
                Section.HEADERS,
                Status.FAIL,
                severity=Severity.LOW,
                waiver=dict(WAIVER, check="HD-04", expired=True, expires="2020-01-01"),
            ),
            result("ID-01", Section.IDENTITY, Status.SKIP, "needs credentials: give --user"),
            result("AU-01", Section.AUDIT, Status.ERROR, "timed out after 10s"),
        ),
        notes=("the waiver for HD-04 expired on 2020-01-01",),
        baseline={
            "source": "old.json",
            "baseline_started_at": None,
            "new": ["TR-02"],
            "fixed": [],
            "unchanged": ["HD-04"],
        },
    )


# --- JSON ---------------------------------------------------------------------------------------


def json_validator() -> jsonschema.Draft202012Validator:
    schema = json_reporter.load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def test_json_report_validates(report: Report) -> None:
    document = json.loads(json_reporter.dumps(report))
    json_validator().validate(document)
    assert document["exit_code"] == 1
    assert document["counts"] == {"pass": 1, "fail": 2, "error": 1, "skip": 1, "waived": 1}
    assert [c["id"] for c in document["checks"]] == [r.id for r in report.results]
    assert "secret" not in json_reporter.dumps(report)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["checks"][0].update(status="maybe"),
        lambda d: d["checks"][0].pop("evidence"),
        lambda d: d["checks"][0].update(id="TR-1"),
        lambda d: d["checks"][2]["waiver"].update(expired=True),  # waived by an expired waiver
        lambda d: d["options"].update(password="x"),
        lambda d: d.update(exit_code=64),
        lambda d: d.update(target="https://host/path"),
        lambda d: d.update(extra=1),
    ],
)
def test_json_schema_rejects_broken_reports(report: Report, breakage: Any) -> None:
    document = json.loads(json_reporter.dumps(report))
    breakage(document)
    assert not json_validator().is_valid(document)


def test_a_real_run_validates_and_is_a_baseline(tmp_path: Path) -> None:
    reg = Registry(strict_catalogue=False)
    from tundra.core.acceptance.model import errored, failed, passed

    reg.check("TR-01", "t1", section=Section.TRANSPORT, severity=Severity.LOW)(
        lambda ctx: passed("ok", raw=b"\x00")
    )
    reg.check("TR-02", "t2", section=Section.TRANSPORT, severity=Severity.LOW)(
        lambda ctx: failed("bad")
    )
    reg.check("ST-01", "t3", section=Section.STORAGE, severity=Severity.LOW, local=True)(
        lambda ctx: errored("?")
    )
    done = runner.run(RunOptions(url="https://panel.test"), registry=reg)
    text = json_reporter.dumps(done)
    json_validator().validate(json.loads(text))
    path = tmp_path / "report.json"
    path.write_text(text)
    assert load_baseline(path).statuses == {"TR-01": "pass", "TR-02": "fail", "ST-01": "skip"}


# --- JUnit --------------------------------------------------------------------------------------


@dataclass
class Decl:
    simple: bool = False
    mixed: bool = False
    sequence: list[tuple[str, int, float]] = field(default_factory=list)
    attributes: dict[str, tuple[str, bool]] = field(default_factory=dict)


def read_xsd(path: Path) -> dict[str, Decl]:
    """The global element declarations of an XSD that uses only the constructs listed above."""
    root = ET.fromstring(path.read_bytes())  # noqa: S314 - our own fixture
    decls: dict[str, Decl] = {}
    for element in root.findall(f"{XS}element"):
        name = element.attrib["name"]
        if element.get("type") == "xs:string":
            decls[name] = Decl(simple=True)
            continue
        complex_type = element.find(f"{XS}complexType")
        assert complex_type is not None, f"unsupported declaration of {name}"
        decl = Decl(mixed=complex_type.get("mixed") == "true")
        for child in complex_type:
            if child.tag == f"{XS}sequence":
                for particle in child:
                    assert particle.tag == f"{XS}element" and "ref" in particle.attrib
                    high = particle.get("maxOccurs", "1")
                    decl.sequence.append(
                        (
                            particle.attrib["ref"],
                            int(particle.get("minOccurs", "1")),
                            float("inf") if high == "unbounded" else int(high),
                        )
                    )
            elif child.tag == f"{XS}attribute":
                decl.attributes[child.attrib["name"]] = (
                    child.attrib["type"],
                    child.get("use") == "required",
                )
            else:
                raise AssertionError(f"unsupported XSD construct {child.tag}")
        decls[name] = decl
    return decls


def parse(text: str) -> ET.Element:
    return ET.fromstring(text.encode())  # noqa: S314 - the reporter's own output


def _type_ok(kind: str, value: str) -> bool:
    if kind == "xs:string":
        return True
    if kind == "xs:int":
        return re.fullmatch(r"[+-]?[0-9]+", value) is not None and -(2**31) <= int(value) < 2**31
    if kind == "xs:decimal":
        try:
            Decimal(value)
        except InvalidOperation:
            return False
        return re.fullmatch(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)", value) is not None
    if kind == "xs:dateTime":
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return False
        return "T" in value
    raise AssertionError(f"unsupported attribute type {kind}")


def validate_xml(element: ET.Element, decls: dict[str, Decl], where: str = "") -> list[str]:
    path = f"{where}/{element.tag}"
    decl = decls.get(element.tag)
    if decl is None:
        return [f"{path}: element not declared"]
    problems: list[str] = []
    children = list(element)
    text = (element.text or "") + "".join(c.tail or "" for c in children)
    if decl.simple:
        if children or element.attrib:
            problems.append(f"{path}: a simple element has children or attributes")
        return problems
    for name, value in element.attrib.items():
        if name not in decl.attributes:
            problems.append(f"{path}: undeclared attribute {name}")
        elif not _type_ok(decl.attributes[name][0], value):
            problems.append(f"{path}: @{name}={value!r} is not {decl.attributes[name][0]}")
    for name, (_, required) in decl.attributes.items():
        if required and name not in element.attrib:
            problems.append(f"{path}: missing required @{name}")
    if not decl.mixed and text.strip():
        problems.append(f"{path}: text in an element that is not mixed")
    position = 0
    for ref, low, high in decl.sequence:
        count = 0
        while position < len(children) and children[position].tag == ref and count < high:
            count += 1
            position += 1
        if count < low:
            problems.append(f"{path}: expected at least {low} <{ref}>")
    if position < len(children):
        problems.append(f"{path}: <{children[position].tag}> is not allowed here")
    for child in children:
        problems.extend(validate_xml(child, decls, path))
    return problems


@pytest.fixture(scope="module")
def xsd() -> dict[str, Decl]:
    return read_xsd(FIXTURES / "junit-jenkins.xsd")


def test_junit_report_validates(report: Report, xsd: dict[str, Decl]) -> None:
    root = parse(junit.dumps(report))
    assert validate_xml(root, xsd) == []
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["transport", "headers", "identity", "audit"]
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert "TR-01 Title of TR-01 <&>" in cases
    failure = cases["TR-02 Title of TR-02 <&>"].find("failure")
    assert failure is not None and failure.get("message") == "TLS 1.2 accepted ✗"  # \x07 gone
    assert '"status": 200' in (failure.text or "")
    assert cases["HD-03 Title of HD-03 <&>"].find("failure") is None  # waived passes
    assert "waived" in (cases["HD-03 Title of HD-03 <&>"].findtext("system-out") or "")
    assert cases["HD-04 Title of HD-04 <&>"].find("failure") is not None  # expired waiver
    assert "EXPIRED" in (cases["HD-04 Title of HD-04 <&>"].findtext("system-out") or "")
    skipped = cases["ID-01 Title of ID-01 <&>"].find("skipped")
    assert skipped is not None and "--user" in (skipped.get("message") or "")
    assert cases["AU-01 Title of AU-01 <&>"].find("error") is not None
    assert root.get("tests") == "6" and root.get("failures") == "2" and root.get("errors") == "1"
    transport = suites[0]
    assert (transport.get("tests"), transport.get("failures")) == ("2", "1")
    assert transport.get("timestamp") == "2026-05-01T10:00:00"


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda r: r.find("testsuite").attrib.pop("name"), "missing required @name"),
        (lambda r: r.find("testsuite").set("tests", "six"), "is not xs:int"),
        (lambda r: r.find("testsuite").set("colour", "red"), "undeclared attribute"),
        (
            lambda r: r.find("testsuite").insert(0, ET.Element("testcase", name="x")),
            "<properties> is not allowed here",
        ),
        (lambda r: r.find(".//testcase").append(ET.Element("skipped")), "not allowed here"),
        (lambda r: r.find(".//testcase").set("time", "1,5"), "is not xs:decimal"),
        (lambda r: setattr(r.find(".//property"), "text", "words"), "not mixed"),
        (lambda r: r.append(ET.Element("suite")), "not allowed here"),
    ],
)
def test_the_junit_validator_catches_violations(
    report: Report, xsd: dict[str, Decl], mutate: Any, problem: str
) -> None:
    root = parse(junit.dumps(report))
    mutate(root)
    problems = validate_xml(root, xsd)
    assert any(problem in p for p in problems), problems


# --- SARIF --------------------------------------------------------------------------------------


def sarif_validator() -> jsonschema.Draft7Validator:
    schema = json.loads((FIXTURES / "sarif-2.1.0-subset.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(
        schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    )


def test_sarif_report_validates(report: Report) -> None:
    document = json.loads(sarif.dumps(report))
    sarif_validator().validate(document)
    run = document["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == [r.id for r in report.results]
    by_rule = {r["ruleId"]: r for r in run["results"]}
    assert by_rule["TR-01"]["kind"] == "pass" and by_rule["TR-01"]["level"] == "none"
    assert by_rule["TR-02"]["kind"] == "fail" and by_rule["TR-02"]["level"] == "error"
    assert by_rule["HD-04"]["level"] == "note"  # a low failure
    assert by_rule["HD-03"]["suppressions"][0]["status"] == "accepted"
    assert by_rule["HD-03"]["suppressions"][0]["justification"] == WAIVER["justification"]
    assert "suppressions" not in by_rule["HD-04"]  # an expired waiver suppresses nothing
    assert by_rule["ID-01"]["kind"] == "notApplicable"
    assert by_rule["AU-01"]["kind"] == "open"
    assert all(by_rule[r["id"]]["ruleIndex"] == i for i, r in enumerate(rules))
    invocation = run["invocations"][0]
    assert invocation["executionSuccessful"] is False and invocation["exitCode"] == 1


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d.update(version="2.0.0"),
        lambda d: d["runs"][0]["results"][0].update(level="warning"),  # a pass with a level
        lambda d: d["runs"][0]["results"][1].update(kind="failed"),
        lambda d: d["runs"][0]["results"][1].pop("message"),
        lambda d: d["runs"][0]["tool"]["driver"].pop("name"),
        lambda d: d["runs"][0]["results"][2]["suppressions"][0].update(kind="waiver"),
        lambda d: d["runs"][0]["invocations"][0].update(startTimeUtc="yesterday"),
    ],
)
def test_sarif_schema_rejects_broken_logs(report: Report, breakage: Any) -> None:
    document = json.loads(sarif.dumps(report))
    broken = copy.deepcopy(document)
    breakage(broken)
    assert not sarif_validator().is_valid(broken)


def test_waiver_dict_shape_matches_the_schema() -> None:
    waiver = Waiver("HD-03", "a real reason here", date(2999, 1, 1), where="w entry 1")
    record = waiver.to_dict(today=date(2026, 1, 1))
    defs = json_reporter.load_schema()["$defs"]
    schema = {"$defs": defs, "$ref": "#/$defs/check/properties/waiver"}
    jsonschema.Draft202012Validator(schema).validate(record)
    assert not jsonschema.Draft202012Validator(schema).is_valid(dict(record, check="HD3"))
