"""Waiver files: strict parsing naming the entry and line, expiry, and how waivers apply."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from tundra.core.acceptance.model import Result, Section, Severity, Status
from tundra.core.acceptance.waivers import Waiver, apply_waivers, load_waivers, parse_waivers
from tundra.core.errors import InvalidFile

GOOD = """\
# accepted for now
[[waiver]]
check = "HD-03"
justification = "the reverse proxy sets Referrer-Policy (OPS-142)"
expires = 2026-09-30
owner = "ops@example.com"

[[waiver]]
check = "TR-05"
justification = "compression is off upstream; verified manually"
expires = "2026-12-31"
"""
TODAY = date(2026, 6, 1)


def result(check_id: str, status: Status) -> Result:
    return Result(check_id, "t", Section.HEADERS, Severity.HIGH, status, "s", {}, 1)


def test_a_good_file_parses() -> None:
    waivers = parse_waivers(GOOD, source="w.toml")
    assert [w.check for w in waivers] == ["HD-03", "TR-05"]
    assert waivers[0].expires == date(2026, 9, 30)
    assert waivers[0].owner == "ops@example.com"
    assert waivers[1].expires == date(2026, 12, 31)
    assert waivers[0].where == "w.toml entry 1 (line 2)"
    assert waivers[1].where == "w.toml entry 2 (line 8)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[waiver]]\ncheck = "HD-03"\nexpires = 2026-01-01\n',
            r"entry 1 \(line 1\).*justification",
        ),
        (
            '[[waiver]]\ncheck = "HD-03"\njustification = "ok"\nexpires = 2026-01-01\n',
            "justification",
        ),
        ('[[waiver]]\ncheck = "HD-03"\njustification = "a good long reason"\n', "needs 'expires'"),
        (
            '[[waiver]]\ncheck = "HD-03"\njustification = "a good long reason"\n'
            'expires = "next year"\n',
            "needs 'expires'",
        ),
        (
            '[[waiver]]\ncheck = "HD-03"\njustification = "a good long reason"\n'
            "expires = 2026-01-01T10:00:00Z\n",
            "needs 'expires'",
        ),
        (
            '[[waiver]]\ncheck = "HD-3"\njustification = "a good long reason"\n'
            "expires = 2026-01-01\n",
            "check id",
        ),
        (
            '[[waiver]]\ncheck = "ZZ-01"\njustification = "a good long reason"\n'
            "expires = 2026-01-01\n",
            "no check 'ZZ-01'",
        ),
        (
            '[[waiver]]\ncheck = "HD-03"\njustification = "a good long reason"\n'
            'expires = 2026-01-01\nscope = "all"\n',
            "unknown key",
        ),
        (
            GOOD + '\n[[waiver]]\ncheck = "HD-03"\njustification = "a good long reason"\n'
            "expires = 2026-01-01\n",
            "entry 3 \\(line 13\\): a second waiver for HD-03",
        ),
        ("waiver = 1\n", "array of tables"),
        ('check = "HD-03"\n', "unexpected top-level"),
        ("[[waiver]\n", "not valid TOML"),
    ],
)
def test_malformed_files_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(InvalidFile, match=message):
        parse_waivers(text, source="w.toml")


def test_load_waivers_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "waivers.toml"
    path.write_text(GOOD)
    assert len(load_waivers(path)) == 2
    with pytest.raises(InvalidFile, match="cannot read"):
        load_waivers(tmp_path / "missing.toml")


def test_known_ids_can_be_narrowed() -> None:
    with pytest.raises(InvalidFile, match="no check 'TR-05'"):
        parse_waivers(GOOD, known_ids=["HD-03"])


def test_a_waiver_turns_a_failure_into_waived() -> None:
    waiver = Waiver("HD-03", "a good long reason", date(2026, 9, 30), where="w entry 1")
    applied, notes = apply_waivers([result("HD-03", Status.FAIL)], [waiver], today=TODAY)
    assert applied[0].status is Status.WAIVED
    assert applied[0].waiver == waiver.to_dict(today=TODAY)
    assert notes == []


def test_a_waiver_is_valid_through_its_expiry_day() -> None:
    waiver = Waiver("HD-03", "a good long reason", TODAY, where="w entry 1")
    applied, _ = apply_waivers([result("HD-03", Status.FAIL)], [waiver], today=TODAY)
    assert applied[0].status is Status.WAIVED


def test_an_expired_waiver_does_not_apply_and_is_reported() -> None:
    waiver = Waiver("HD-03", "a good long reason", date(2026, 5, 31), where="w entry 1 (line 2)")
    applied, notes = apply_waivers([result("HD-03", Status.FAIL)], [waiver], today=TODAY)
    assert applied[0].status is Status.FAIL
    assert applied[0].waiver is not None and applied[0].waiver["expired"] is True
    assert notes == [
        "the waiver for HD-03 expired on 2026-05-31 (w entry 1 (line 2)); it no longer applies"
    ]


def test_a_waiver_never_hides_an_error_and_reports_a_needless_one() -> None:
    waiver = Waiver("HD-03", "a good long reason", date(2026, 9, 30))
    errored, _ = apply_waivers([result("HD-03", Status.ERROR)], [waiver], today=TODAY)
    assert errored[0].status is Status.ERROR
    passing, notes = apply_waivers([result("HD-03", Status.PASS)], [waiver], today=TODAY)
    assert passing[0].status is Status.PASS
    assert notes == ["the waiver for HD-03 is not needed: the check passes"]


def test_waivers_for_other_checks_change_nothing() -> None:
    waiver = Waiver("TR-05", "a good long reason", date(2026, 9, 30))
    applied, notes = apply_waivers([result("HD-03", Status.FAIL)], [waiver], today=TODAY)
    assert applied[0].status is Status.FAIL and applied[0].waiver is None
    assert notes == []
