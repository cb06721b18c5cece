"""Baselines: new, fixed and unchanged problems compared with a previous JSON report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tundra.core.acceptance.baseline import compare, load_baseline, parse_baseline
from tundra.core.acceptance.model import Result, Section, Severity, Status
from tundra.core.errors import InvalidFile


def result(check_id: str, status: Status) -> Result:
    return Result(check_id, "t", Section.HEADERS, Severity.HIGH, status, "s", {}, 1)


def previous(**statuses: str) -> dict[str, Any]:
    return {
        "started_at": "2026-05-01T10:00:00.000000Z",
        "checks": [{"id": k.replace("_", "-"), "status": v} for k, v in statuses.items()],
    }


def test_new_fixed_unchanged() -> None:
    baseline = parse_baseline(
        previous(
            HD_01="fail", HD_02="error", HD_03="pass", HD_04="fail", HD_05="fail", HD_06="waived"
        ),
        source="old.json",
    )
    now = [
        result("HD-01", Status.FAIL),  # unchanged
        result("HD-02", Status.PASS),  # fixed (was an error)
        result("HD-03", Status.FAIL),  # new
        result("HD-04", Status.WAIVED),  # fixed: accepted now
        result("HD-05", Status.SKIP),  # not run: neither fixed nor new
        result("HD-06", Status.ERROR),  # new (waived was not a problem)
        result("TR-01", Status.FAIL),  # new: not in the baseline at all
    ]
    diff = compare(baseline, now)
    assert diff.new == ("HD-03", "HD-06", "TR-01")
    assert diff.fixed == ("HD-02", "HD-04")
    assert diff.unchanged == ("HD-01",)
    assert diff.to_dict() == {
        "source": "old.json",
        "baseline_started_at": "2026-05-01T10:00:00.000000Z",
        "new": ["HD-03", "HD-06", "TR-01"],
        "fixed": ["HD-02", "HD-04"],
        "unchanged": ["HD-01"],
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "not a tundra acceptance JSON report"),
        ({"results": []}, "not a tundra acceptance JSON report"),
        ({"checks": [{"id": "HD-01"}]}, "entry 1"),
        ({"checks": [{"id": 3, "status": "pass"}]}, "entry 1"),
        (
            {"checks": [{"id": "HD-01", "status": "pass"}, {"id": "HD-02", "status": "ok"}]},
            "entry 2",
        ),
    ],
)
def test_a_bad_baseline_is_refused(data: Any, message: str) -> None:
    with pytest.raises(InvalidFile, match=message):
        parse_baseline(data)


def test_load_baseline(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps(previous(HD_01="fail")))
    assert load_baseline(path).statuses == {"HD-01": "fail"}
    path.write_text("{not json")
    with pytest.raises(InvalidFile, match="not JSON"):
        load_baseline(path)
    with pytest.raises(InvalidFile, match="cannot read"):
        load_baseline(tmp_path / "missing.json")
