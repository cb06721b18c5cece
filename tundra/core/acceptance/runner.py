"""The runner: select checks, run them concurrently with time limits, collect a report.

Checks run in a thread pool (network waits dominate, so threads are the right tool). At most
``options.workers`` checks are *active* at once; a check that overruns its limit is reported as
an error ("timed out after Ns"), its context's ``cancelled`` event is set, and its slot is
freed at once. Python cannot kill a thread, so the overrunning call finishes in the background;
its network operations are bounded by the context's I/O timeout, which is capped by the check's
deadline, so it does not linger long. A check that raises becomes an error with the exception
in its evidence: one broken check never ends the run.

Before anything runs, checks whose inputs are missing are skipped with the option to give
(``needs``), and host-local checks are skipped unless the run is ``--local``.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any

from tundra import __version__
from tundra.core.acceptance.baseline import Baseline, compare
from tundra.core.acceptance.context import RunContext, RunOptions
from tundra.core.acceptance.model import Outcome, Report, Result, Status, errored, skipped
from tundra.core.acceptance.registry import NEEDS, CheckSpec, Registry, current
from tundra.core.acceptance.waivers import Waiver, apply_waivers
from tundra.core.clock import now_iso
from tundra.core.errors import InvalidInput, TundraError

#: Upper bound on pool threads: active checks plus ones abandoned after a timeout.
MAX_THREADS = 64


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """What the runner reports while it works (called from the runner's own thread).

    ``kind``: ``"started"`` (total known), ``"check_started"``, ``"check_finished"`` (with
    ``result``; skips before the run are reported this way too) and ``"finished"``.
    """

    kind: str
    total: int
    done: int
    check: CheckSpec | None = None
    result: Result | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "total": self.total,
            "done": self.done,
            "check": self.check.id if self.check else None,
            "result": self.result.to_dict() if self.result else None,
        }


ProgressCallback = Callable[[ProgressEvent], None]


def missing_need(spec: CheckSpec, options: RunOptions) -> str | None:
    """Why ``spec`` cannot run with ``options`` (a skip reason naming the option), or None."""
    if spec.local and not options.local:
        return "host-local check: run on the panel host with --local"
    for need in spec.needs:
        have = {
            "credentials": options.has_credentials,
            "agent_identity": options.has_agent_identity,
            "services": options.services is not None,
        }[need]
        if not have:
            return f"needs {need.replace('_', ' ')}: give {NEEDS[need]}"
    return None


def _jsonable(value: Any) -> Any:
    """Evidence as plain JSON: unknown objects become their text, bytes their hex."""

    def default(obj: Any) -> Any:
        if isinstance(obj, bytes | bytearray):
            return obj.hex()
        if isinstance(obj, set | frozenset | tuple):
            return sorted(obj, key=str) if isinstance(obj, set | frozenset) else list(obj)
        return str(obj)

    loaded = json.loads(json.dumps(value, default=default, allow_nan=False))
    return loaded if isinstance(loaded, dict) else {"value": loaded}


def _execute(spec: CheckSpec, ctx: RunContext) -> Outcome:
    """Run one check; never raises (an exception is an error outcome with its evidence)."""
    try:
        return _outcome(spec, ctx)
    finally:
        services = ctx.options.services
        if services is not None:
            # Pool threads come and go: close this thread's connections, if it opened any.
            for name in ("db", "kv"):
                if name in services.__dict__:
                    getattr(services, name).close_thread()


def _outcome(spec: CheckSpec, ctx: RunContext) -> Outcome:
    try:
        outcome = spec.fn(ctx)
    except TundraError as exc:
        return errored(f"{type(exc).__name__}: {exc}", exception=type(exc).__name__)
    except Exception as exc:
        frames = traceback.extract_tb(exc.__traceback__)[-3:]
        return errored(
            f"the check crashed: {type(exc).__name__}: {exc}",
            exception=type(exc).__name__,
            message=str(exc),
            where=[f"{f.filename}:{f.lineno} in {f.name}" for f in frames],
        )
    if not isinstance(outcome, Outcome):
        return errored(
            f"the check returned {type(outcome).__name__}, not an Outcome",
            returned=repr(outcome)[:200],
        )
    return outcome


def _result(spec: CheckSpec, outcome: Outcome, duration: float) -> Result:
    try:
        evidence = _jsonable(outcome.evidence)
        status, summary = outcome.status, outcome.summary
    except (TypeError, ValueError) as exc:
        evidence = {"unserialisable_evidence": str(exc)}
        status, summary = Status.ERROR, f"the check's evidence is not JSON: {exc}"
    return Result(
        id=spec.id,
        title=spec.title,
        section=spec.section,
        severity=spec.severity,
        status=Status(status),
        summary=summary or str(status),
        evidence=evidence,
        duration_ms=max(0, round(duration * 1000)),
    )


@dataclass
class _Running:
    spec: CheckSpec
    ctx: RunContext
    started: float
    limit: float

    @property
    def deadline(self) -> float:
        return self.started + self.limit


def run(
    options: RunOptions,
    *,
    registry: Registry | None = None,
    checks: Sequence[CheckSpec] | None = None,
    waivers: Sequence[Waiver] = (),
    baseline: Baseline | None = None,
    on_progress: ProgressCallback | None = None,
) -> Report:
    """Run the selected checks against ``options.url`` and return the report.

    Selection: ``checks`` if given, else ``options.sections``/``options.checks`` in
    ``registry`` (default: the current registry). Unknown sections or ids, or an empty
    selection, are :class:`InvalidInput`.
    """
    if options.workers < 1:
        raise InvalidInput("workers must be at least 1")
    if options.timeout is not None and not (0 < options.timeout < math.inf):
        raise InvalidInput("--timeout must be a positive number of seconds")
    base = RunContext(options)  # parses the URL: a bad --url is a usage error before any work
    selected = (
        list(checks)
        if checks is not None
        else ((registry or current()).select(options.sections, options.checks))
    )
    if not selected:
        raise InvalidInput("no checks selected", hint="`tundra acceptance list` shows them")
    notify = on_progress or (lambda event: None)
    started_at = now_iso()
    total = len(selected)
    results: dict[str, Result] = {}
    notify(ProgressEvent("started", total, 0))

    def finish(spec: CheckSpec, result: Result) -> None:
        results[spec.id] = result
        notify(ProgressEvent("check_finished", total, len(results), spec, result))

    runnable: deque[CheckSpec] = deque()
    for spec in selected:
        reason = missing_need(spec, options)
        if reason is None:
            runnable.append(spec)
        else:
            finish(spec, _result(spec, skipped(reason, needs=list(spec.needs)), 0.0))

    cleanup_notes: list[str] = []
    first = deque(spec for spec in runnable if not spec.run_last)
    last = deque(spec for spec in runnable if spec.run_last)
    try:
        for batch in (first, last):
            if batch:
                _run_pool(batch, base, options, total, results, finish, notify)
    finally:
        cleanup_notes = base.run_cleanups()

    ordered = [results[spec.id] for spec in selected]
    ordered, notes = apply_waivers(ordered, waivers)
    notes.extend(cleanup_notes)
    report = Report(
        tool_version=__version__,
        target=base.target.base_url,
        started_at=started_at,
        finished_at=now_iso(),
        options=options.summary(),
        results=tuple(ordered),
        fail_on=options.fail_on,
        notes=tuple(notes),
    )
    if baseline is not None:
        report = replace(report, baseline=compare(baseline, report.results).to_dict())
    notify(ProgressEvent("finished", total, total))
    return report


def _run_pool(
    runnable: deque[CheckSpec],
    base: RunContext,
    options: RunOptions,
    total: int,
    results: dict[str, Result],
    finish: Callable[[CheckSpec, Result], None],
    notify: ProgressCallback,
) -> None:
    threads = min(MAX_THREADS, len(runnable))
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="acceptance")
    running: dict[Future[Outcome], _Running] = {}
    try:
        while runnable or running:
            # Overrun checks leave `running` at once, so they never hold a slot; the pool
            # has spare threads for them (bounded by MAX_THREADS).
            while runnable and len(running) < options.workers:
                spec = runnable.popleft()
                limit = options.timeout if options.timeout is not None else spec.timeout
                started = time.monotonic()
                ctx = base.bind(spec.id, deadline=started + limit)
                notify(ProgressEvent("check_started", total, len(results), spec))
                try:
                    future = executor.submit(_execute, spec, ctx)
                except RuntimeError as exc:  # the pool is saturated by abandoned checks
                    finish(spec, _result(spec, errored(f"could not start: {exc}"), 0.0))
                    continue
                running[future] = _Running(spec, ctx, started, limit)
            if not running:
                continue
            next_deadline = min(r.deadline for r in running.values())
            done, _ = wait(
                list(running),
                timeout=max(0.0, next_deadline - time.monotonic()),
                return_when=FIRST_COMPLETED,
            )
            for future in done:
                entry = running.pop(future)
                finish(
                    entry.spec,
                    _result(entry.spec, future.result(), time.monotonic() - entry.started),
                )
            moment = time.monotonic()
            for future, entry in list(running.items()):
                if moment >= entry.deadline and not future.done():
                    del running[future]
                    entry.ctx.cancelled.set()
                    finish(
                        entry.spec,
                        _result(
                            entry.spec,
                            errored(
                                f"timed out after {entry.limit:g}s",
                                timeout_s=entry.limit,
                                hint="raise --timeout, or check that the target answers",
                            ),
                            moment - entry.started,
                        ),
                    )
    finally:
        # Do not wait for abandoned checks: their network calls end within the I/O timeout.
        executor.shutdown(wait=False, cancel_futures=True)
