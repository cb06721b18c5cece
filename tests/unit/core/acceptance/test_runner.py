"""The runner and the registry: selection, needs and local-only skips, time limits, crashes,
real concurrency, progress events, the memo, clean-ups and the exit-code rule.

Every test builds its own Registry (never the default one), so nothing registered here leaks
into other tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tundra.core.acceptance import registry as registry_module
from tundra.core.acceptance import runner
from tundra.core.acceptance.context import RunContext, RunOptions
from tundra.core.acceptance.model import (
    CATALOGUE,
    ExitCode,
    Outcome,
    Section,
    Severity,
    Status,
    errored,
    failed,
    passed,
)
from tundra.core.acceptance.registry import Registry
from tundra.core.acceptance.waivers import Waiver
from tundra.core.errors import InvalidInput

URL = "https://panel.test"


def options(**changes: Any) -> RunOptions:
    return RunOptions(url=URL, **changes)


def fake(
    entries: list[tuple[str, Section, Callable[[RunContext], Outcome]]], **kwargs: Any
) -> Registry:
    reg = Registry(strict_catalogue=False)
    for check_id, section, fn in entries:
        reg.check(
            check_id, f"title of {check_id}", section=section, severity=Severity.HIGH, **kwargs
        )(fn)
    return reg


def ok(ctx: RunContext) -> Outcome:
    return passed("fine", seen=ctx.check_id)


# --- selection ----------------------------------------------------------------------------------


def three() -> Registry:
    return fake(
        [
            ("TR-01", Section.TRANSPORT, ok),
            ("HD-01", Section.HEADERS, ok),
            ("HD-02", Section.HEADERS, ok),
        ]
    )


@pytest.mark.parametrize(
    ("sections", "ids", "expected"),
    [
        ((), (), ["TR-01", "HD-01", "HD-02"]),
        (("headers",), (), ["HD-01", "HD-02"]),
        (("HEADERS",), (), ["HD-01", "HD-02"]),
        ((), ("tr-01",), ["TR-01"]),
        (("headers",), ("TR-01",), ["TR-01", "HD-01", "HD-02"]),
    ],
)
def test_selection(sections: tuple[str, ...], ids: tuple[str, ...], expected: list[str]) -> None:
    report = runner.run(options(sections=sections, checks=ids), registry=three())
    assert [r.id for r in report.results] == expected


@pytest.mark.parametrize(
    ("sections", "ids", "message"),
    [
        (("nonsense",), (), "unknown section"),
        ((), ("XX-99",), "unknown check"),
        (("storage",), (), "no checks selected"),
    ],
)
def test_bad_selection_is_a_usage_error(
    sections: tuple[str, ...], ids: tuple[str, ...], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        runner.run(options(sections=sections, checks=ids), registry=three())


def test_results_keep_catalogue_order_whatever_finishes_first() -> None:
    def slow(ctx: RunContext) -> Outcome:
        time.sleep(0.2)
        return passed("slow")

    reg = fake([("TR-01", Section.TRANSPORT, slow), ("TR-02", Section.TRANSPORT, ok)])
    assert [r.id for r in runner.run(options(), registry=reg).results] == ["TR-01", "TR-02"]


# --- needs and local-only -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("need", "given", "named"),
    [
        ("credentials", {}, "--password-env"),
        ("credentials", {"user": "acceptance"}, "--password-env"),
        ("agent_identity", {"agent_cert": Path("a.pem")}, "--agent-cert and --agent-key"),
        ("services", {"local": True}, "--local"),
    ],
)
def test_a_missing_need_skips_naming_the_option(
    need: str, given: dict[str, Any], named: str
) -> None:
    called = []
    reg = Registry(strict_catalogue=False)
    reg.check("ID-01", "t", section=Section.IDENTITY, severity=Severity.HIGH, needs=[need])(
        lambda ctx: called.append(1) or passed("ran")
    )
    result = runner.run(options(**given), registry=reg).results[0]
    assert result.status is Status.SKIP
    assert named in result.summary
    assert result.evidence == {"needs": [need]}
    assert called == []


def test_a_need_that_is_there_runs() -> None:
    reg = Registry(strict_catalogue=False)
    reg.check(
        "ID-01", "t", section=Section.IDENTITY, severity=Severity.HIGH, needs=["credentials"]
    )(ok)
    result = runner.run(options(user="u", password="p"), registry=reg).results[0]
    assert result.status is Status.PASS


def test_host_local_checks_skip_unless_local() -> None:
    reg = Registry(strict_catalogue=False)
    reg.check("ST-01", "t", section=Section.STORAGE, severity=Severity.HIGH, local=True)(ok)
    remote = runner.run(options(), registry=reg).results[0]
    assert remote.status is Status.SKIP
    assert "host-local" in remote.summary and "--local" in remote.summary
    local = runner.run(options(local=True), registry=reg).results[0]
    assert local.status is Status.PASS


def test_needing_services_makes_a_check_host_local() -> None:
    reg = Registry(strict_catalogue=False)
    reg.check("ST-01", "t", section=Section.STORAGE, severity=Severity.HIGH, needs=["services"])(ok)
    assert reg.get("ST-01").local is True


# --- time limits, crashes, bad outcomes -----------------------------------------------------


def test_a_check_that_overruns_is_an_error_and_is_told_to_stop() -> None:
    observed = threading.Event()

    def hangs(ctx: RunContext) -> Outcome:
        if ctx.cancelled.wait(10):
            observed.set()
        return passed("too late")

    reg = fake([("TR-01", Section.TRANSPORT, hangs), ("TR-02", Section.TRANSPORT, ok)], timeout=0.3)
    started = time.monotonic()
    report = runner.run(options(), registry=reg)
    elapsed = time.monotonic() - started
    hung, fine = report.results
    assert hung.status is Status.ERROR
    assert hung.summary == "timed out after 0.3s"
    assert hung.evidence["timeout_s"] == 0.3
    assert fine.status is Status.PASS
    assert elapsed < 2
    assert observed.wait(2)  # the abandoned check saw its cancellation
    assert report.exit_code == ExitCode.ERRORED


def test_the_timeout_option_overrides_every_check_limit() -> None:
    def sleeps(ctx: RunContext) -> Outcome:
        ctx.cancelled.wait(5)
        return passed("done")

    reg = fake([("TR-01", Section.TRANSPORT, sleeps)], timeout=60)
    result = runner.run(options(timeout=0.2), registry=reg).results[0]
    assert result.summary == "timed out after 0.2s"


def test_an_overrun_check_frees_its_slot() -> None:
    def hangs(ctx: RunContext) -> Outcome:
        ctx.cancelled.wait(10)
        return passed("late")

    reg = fake([("TR-01", Section.TRANSPORT, hangs), ("TR-02", Section.TRANSPORT, ok)], timeout=0.3)
    started = time.monotonic()
    report = runner.run(options(workers=1), registry=reg)
    assert [r.status for r in report.results] == [Status.ERROR, Status.PASS]
    assert time.monotonic() - started < 2


def test_the_deadline_caps_io_timeouts() -> None:
    seen: list[float] = []

    def measures(ctx: RunContext) -> Outcome:
        seen.append(ctx.io_timeout())
        return passed("measured")

    reg = fake([("TR-01", Section.TRANSPORT, measures)], timeout=0.5)
    runner.run(options(io_timeout=5.0), registry=reg)
    assert 0 < seen[0] <= 0.5


def test_an_exception_is_an_error_with_evidence_and_the_run_goes_on() -> None:
    def crashes(ctx: RunContext) -> Outcome:
        raise ConnectionRefusedError("connection refused by 192.0.2.1")

    reg = fake([("TR-01", Section.TRANSPORT, crashes), ("TR-02", Section.TRANSPORT, ok)])
    crashed, fine = runner.run(options(), registry=reg).results
    assert crashed.status is Status.ERROR
    assert "ConnectionRefusedError" in crashed.summary
    assert crashed.evidence["exception"] == "ConnectionRefusedError"
    assert crashed.evidence["message"] == "connection refused by 192.0.2.1"
    assert any("crashes" in frame for frame in crashed.evidence["where"])
    assert fine.status is Status.PASS


def test_a_tundra_error_is_an_error_result() -> None:
    def refuses(ctx: RunContext) -> Outcome:
        raise InvalidInput("bad gateway address", hint="use HOST:PORT")

    result = runner.run(options(), registry=fake([("AG-01", Section.AGENT, refuses)])).results[0]
    assert result.status is Status.ERROR
    assert "bad gateway address" in result.summary


def test_a_check_returning_no_outcome_is_an_error() -> None:
    reg = fake([("TR-01", Section.TRANSPORT, lambda ctx: True)])  # type: ignore[arg-type,return-value]
    result = runner.run(options(), registry=reg).results[0]
    assert result.status is Status.ERROR
    assert "not an Outcome" in result.summary


def test_evidence_is_made_json() -> None:
    def odd(ctx: RunContext) -> Outcome:
        return passed("odd evidence", raw=b"\x01\x02", path=Path("/x"), items={3, 1, 2}, t=(1, 2))

    result = runner.run(options(), registry=fake([("TR-01", Section.TRANSPORT, odd)])).results[0]
    assert result.evidence == {"raw": "0102", "path": "/x", "items": [1, 2, 3], "t": [1, 2]}


def test_nan_in_evidence_is_an_error_not_a_broken_report() -> None:
    def nan(ctx: RunContext) -> Outcome:
        return passed("nan", value=float("nan"))

    result = runner.run(options(), registry=fake([("TR-01", Section.TRANSPORT, nan)])).results[0]
    assert result.status is Status.ERROR
    assert "not JSON" in result.summary


# --- concurrency ----------------------------------------------------------------------------


def test_checks_really_run_concurrently() -> None:
    # Each check waits at a barrier for all four: this passes only if four run at once.
    barrier = threading.Barrier(4, timeout=5)

    def meets(ctx: RunContext) -> Outcome:
        barrier.wait()
        return passed("met")

    reg = fake([(f"TR-0{n}", Section.TRANSPORT, meets) for n in range(1, 5)])
    report = runner.run(options(workers=4), registry=reg)
    assert [r.status for r in report.results] == [Status.PASS] * 4


def test_no_more_than_workers_run_at_once() -> None:
    lock = threading.Lock()
    active = 0
    peak = 0

    def counts(ctx: RunContext) -> Outcome:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        with lock:
            active -= 1
        return passed("counted")

    reg = fake([(f"HD-0{n}", Section.HEADERS, counts) for n in range(1, 7)])
    runner.run(options(workers=2), registry=reg)
    assert peak == 2


def test_memo_computes_once_and_remembers_failures() -> None:
    calls = {"login": 0, "broken": 0}
    lock = threading.Lock()

    def login() -> str:
        with lock:
            calls["login"] += 1
        time.sleep(0.1)
        return "session"

    def broken() -> str:
        with lock:
            calls["broken"] += 1
        raise RuntimeError("login refused")

    def uses(ctx: RunContext) -> Outcome:
        session = ctx.memo("login", login)
        try:
            ctx.memo("broken", broken)
        except RuntimeError as exc:
            return passed(session, error=str(exc))
        return failed("no error")

    reg = fake([(f"ID-0{n}", Section.IDENTITY, uses) for n in range(1, 6)])
    report = runner.run(options(workers=5), registry=reg)
    assert all(r.status is Status.PASS and r.summary == "session" for r in report.results)
    assert calls == {"login": 1, "broken": 1}


def test_clean_ups_run_after_every_check_and_failures_become_notes() -> None:
    order: list[str] = []

    def registers(ctx: RunContext) -> Outcome:
        ctx.at_end("first", lambda: order.append("first"))

        def broken() -> None:
            raise RuntimeError("token already gone")

        ctx.at_end("second", broken)
        order.append("check")
        return passed("registered")

    def later(ctx: RunContext) -> Outcome:
        time.sleep(0.1)
        order.append("later")
        return passed("later")

    reg = fake([("AU-01", Section.AUDIT, registers), ("AU-02", Section.AUDIT, later)])
    report = runner.run(options(), registry=reg)
    assert order[-1] == "first" and "later" in order[:-1]
    assert any("token already gone" in note for note in report.notes)


# --- progress -------------------------------------------------------------------------------


def test_progress_events_describe_the_run() -> None:
    events: list[runner.ProgressEvent] = []
    reg = Registry(strict_catalogue=False)
    reg.check("TR-01", "t", section=Section.TRANSPORT, severity=Severity.LOW)(ok)
    reg.check("ST-01", "t", section=Section.STORAGE, severity=Severity.LOW, local=True)(ok)
    runner.run(options(), registry=reg, on_progress=events.append)
    kinds = [e.kind for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert all(e.total == 2 for e in events)
    finished = [e for e in events if e.kind == "check_finished"]
    assert {e.check.id for e in finished if e.check} == {"TR-01", "ST-01"}
    assert [e.done for e in finished] == [1, 2]
    started = [e.check.id for e in events if e.kind == "check_started" and e.check]
    assert started == ["TR-01"]  # a skipped check never starts
    assert events[-1].to_dict()["done"] == 2


# --- the exit-code rule, waivers --------------------------------------------------------------


def verdicts(*outcomes: tuple[str, Severity, Outcome]) -> Registry:
    reg = Registry(strict_catalogue=False)
    for check_id, severity, outcome in outcomes:
        reg.check(check_id, "t", section=Section.HEADERS, severity=severity)(
            lambda ctx, o=outcome: o
        )
    return reg


@pytest.mark.parametrize(
    ("outcomes", "fail_on", "code"),
    [
        ([passed("a"), passed("b")], Severity.LOW, 0),
        ([passed("a"), errored("b")], Severity.LOW, 2),
        ([failed("a"), errored("b")], Severity.LOW, 1),
        ([failed("a"), passed("b")], Severity.CRITICAL, 0),
        ([failed("a"), errored("b")], Severity.CRITICAL, 2),
    ],
)
def test_exit_codes(outcomes: list[Outcome], fail_on: Severity, code: int) -> None:
    reg = verdicts(("HD-01", Severity.HIGH, outcomes[0]), ("HD-02", Severity.HIGH, outcomes[1]))
    assert runner.run(options(fail_on=fail_on), registry=reg).exit_code == code


def test_fail_on_counts_failures_at_or_above_the_severity() -> None:
    reg = verdicts(("HD-01", Severity.MEDIUM, failed("medium")))
    assert runner.run(options(fail_on=Severity.MEDIUM), registry=reg).exit_code == 1
    assert runner.run(options(fail_on=Severity.HIGH), registry=reg).exit_code == 0


def test_waivers_turn_failures_into_passes_until_they_expire() -> None:
    from datetime import date, timedelta

    reg = verdicts(("HD-01", Severity.HIGH, failed("no referrer policy")))
    today = date.today()
    valid = Waiver("HD-01", "the proxy sets it, tracked in OPS-1", today + timedelta(days=1))
    report = runner.run(options(), registry=reg, waivers=[valid])
    assert report.results[0].status is Status.WAIVED
    assert report.results[0].waiver is not None
    assert report.exit_code == 0
    expired = Waiver("HD-01", "the proxy sets it, tracked in OPS-1", today - timedelta(days=2))
    report = runner.run(options(), registry=reg, waivers=[expired])
    assert report.results[0].status is Status.FAIL
    assert report.results[0].waiver is not None and report.results[0].waiver["expired"]
    assert any("expired" in note for note in report.notes)
    assert report.exit_code == 1


# --- the registry -----------------------------------------------------------------------------


def test_the_real_registry_admits_only_catalogue_ids_in_their_section() -> None:
    strict = Registry()
    with pytest.raises(ValueError, match="not in the catalogue"):
        strict.check("TR-99", "t", section=Section.TRANSPORT, severity=Severity.LOW)
    with pytest.raises(ValueError, match="not in the catalogue"):
        strict.check("TR-01", "t", section=Section.HEADERS, severity=Severity.LOW)
    with pytest.raises(ValueError, match="unknown needs"):
        strict.check("TR-01", "t", section=Section.TRANSPORT, severity=Severity.LOW, needs=["root"])
    strict.check("TR-01", "t", section=Section.TRANSPORT, severity=Severity.LOW)(ok)
    with pytest.raises(ValueError, match="registered twice"):
        strict.check("TR-01", "t", section=Section.TRANSPORT, severity=Severity.LOW)(
            lambda ctx: passed("x")
        )


def test_use_installs_a_registry_for_the_block_only() -> None:
    reg = three()
    with registry_module.use(reg):
        assert registry_module.current() is reg
        assert [c.id for c in registry_module.all_checks()] == ["TR-01", "HD-01", "HD-02"]
    assert registry_module.current() is not reg


def test_registered_checks_are_catalogue_checks() -> None:
    checks = registry_module.default_registry().all()
    assert checks, "no checks registered"
    for spec in checks:
        assert CATALOGUE[spec.id] == spec.section
        assert spec.title and spec.timeout > 0


def test_bad_run_options_are_usage_errors() -> None:
    reg = three()
    with pytest.raises(InvalidInput, match="https"):
        runner.run(RunOptions(url="http://panel.test"), registry=reg)
    with pytest.raises(InvalidInput, match="timeout"):
        runner.run(options(timeout=-1), registry=reg)
    with pytest.raises(InvalidInput, match="workers"):
        runner.run(options(workers=0), registry=reg)


def test_run_last_checks_start_after_every_other_check() -> None:
    finished: list[str] = []
    lock = threading.Lock()

    def record(name: str, delay: float) -> Callable[[RunContext], Outcome]:
        def fn(ctx: RunContext) -> Outcome:
            time.sleep(delay)
            with lock:
                finished.append(name)
            return passed(name)

        return fn

    reg = Registry(strict_catalogue=False)
    reg.check("ID-05", "storm", section=Section.IDENTITY, severity=Severity.HIGH, run_last=True)(
        record("ID-05", 0.0)
    )
    reg.check("ID-01", "slow", section=Section.IDENTITY, severity=Severity.HIGH)(
        record("ID-01", 0.3)
    )
    reg.check("AU-02", "slower", section=Section.AUDIT, severity=Severity.HIGH)(
        record("AU-02", 0.4)
    )
    report = runner.run(options(workers=8), registry=reg)
    assert finished[-1] == "ID-05"
    assert [r.id for r in report.results] == ["ID-01", "ID-05", "AU-02"]  # catalogue order
