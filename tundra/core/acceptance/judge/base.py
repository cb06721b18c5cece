"""What every scanner adapter shares: verdicts, the job it is given, and running a tool safely.

A scanner adapter (one module per public scanner) declares the catalogue checks it can speak
to, finds its executable, runs it against the same target as tundra, and turns the output into
:class:`Verdict` s — the scanner's own pass/fail on a check, with the scanner's evidence lines.
It never decides agreement; :mod:`.aggregate` compares the verdicts with tundra's results.

Running a tool is the dangerous part: it may be missing, crash, print garbage or hang. Every
command goes through :meth:`Job.run`, which starts the tool in its own process group, kills the
whole group when the scanner's time is up, and raises :class:`ScannerError` for anything that
is not usable output. The aggregator turns that into the scanner's error; it never fails the
run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from tundra.core.acceptance.context import RunOptions, Target
    from tundra.core.acceptance.model import Result

#: Most characters of one stream kept from a tool (nmap's XML or sslyze's JSON stay far below).
MAX_OUTPUT = 8 * 1024 * 1024
#: Python variables of our own interpreter that would confuse a scanner's interpreter.
_DROPPED_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH")


class ScannerError(Exception):
    """The scanner crashed, hung, or gave output that cannot be read. Reported, never fatal."""


class ScannerTimedOut(ScannerError):
    pass


@dataclass(frozen=True, slots=True)
class Verdict:
    """A scanner's own pass/fail on one catalogue check, with its evidence lines."""

    check: str
    passed: bool
    evidence: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Findings:
    """Everything one scanner said: verdicts per check, findings no check covers, notes."""

    verdicts: tuple[Verdict, ...]
    #: Findings of the scanner that no catalogue check speaks to (kept, not compared).
    unmapped: tuple[str, ...] = ()
    #: Why some checks got no verdict (e.g. TR-01 when the target uses non-standard ports).
    notes: tuple[str, ...] = ()
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Invocation:
    """One command a scanner ran (evidence for the report)."""

    argv: tuple[str, ...]
    returncode: int | None
    duration_ms: int
    stderr_tail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "argv": list(self.argv),
            "returncode": self.returncode,
            "duration_ms": self.duration_ms,
            "stderr_tail": self.stderr_tail,
        }


def _tail(text: str, limit: int = 600) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


@dataclass
class Job:
    """What one scanner is given: the target, the run's options, tundra's results, a deadline.

    ``env`` is the environment of every command (``PATH`` decides which tools exist);
    ``deadline`` (``time.monotonic()``) bounds all of the scanner's commands together.
    """

    target: Target
    options: RunOptions
    results: Mapping[str, Result]
    env: Mapping[str, str]
    deadline: float
    workdir: Path
    invocations: list[Invocation] = field(default_factory=list)

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def run(
        self,
        argv: Sequence[str],
        *,
        ok_codes: Sequence[int] = (0,),
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run one command; a timeout, a crash or an unexpected exit code is a ScannerError."""
        limit = self.remaining()
        if limit <= 0:
            raise ScannerTimedOut("no time left for " + Path(argv[0]).name)
        started = time.monotonic()
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                env=dict(env if env is not None else self.env),
                cwd=self.workdir,
                # Its own process group: a timeout kills the tool and everything it started.
                start_new_session=True,
            )
        except OSError as exc:
            raise ScannerError(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
        try:
            stdout, stderr = process.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            self._record(argv, None, started, _reap(process))
            raise ScannerTimedOut(f"timed out after {limit:.0f}s: {' '.join(argv)}") from None
        finally:
            if process.poll() is None:  # an exception other than the timeout
                _kill_group(process)
                _reap(process)
        self._record(argv, process.returncode, started, stderr)
        if process.returncode not in ok_codes:
            detail = _tail(stderr) or _tail(stdout) or "no output"
            raise ScannerError(f"{Path(argv[0]).name} exited {process.returncode}: {detail}")
        return subprocess.CompletedProcess(
            list(argv), process.returncode, stdout[:MAX_OUTPUT], stderr[:MAX_OUTPUT]
        )

    def _record(self, argv: Sequence[str], code: int | None, started: float, stderr: str) -> None:
        self.invocations.append(
            Invocation(
                argv=tuple(argv),
                returncode=code,
                duration_ms=round((time.monotonic() - started) * 1000),
                stderr_tail=_tail(stderr, 300),
            )
        )

    def temporary_file(self, suffix: str) -> Path:
        handle, name = tempfile.mkstemp(suffix=suffix, dir=self.workdir)
        os.close(handle)
        return Path(name)


def _kill_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()


def _reap(process: subprocess.Popen[str]) -> str:
    """Wait for a killed tool; its stderr. A grandchild that left the process group may still
    hold the pipes open: give up on them after a few seconds rather than wait for it."""
    try:
        return process.communicate(timeout=5)[1] or ""
    except subprocess.TimeoutExpired:
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
        process.wait()
        return ""


def scanner_env(path: str | None = None) -> dict[str, str]:
    """The environment scanners run in: ours, ``PATH`` replaced when given, without the
    variables of our own Python that would leak into a scanner's interpreter."""
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    if path is not None:
        env["PATH"] = path
    return env


def find_executable(name: str, env: Mapping[str, str], *, extra_dirs: Sequence[Path] = ()) -> str:
    """The tool ``name`` on the environment's PATH (then ``extra_dirs``), or ScannerMissing."""
    found = shutil.which(name, path=env.get("PATH", ""))
    for directory in extra_dirs:
        if found:
            break
        found = shutil.which(name, path=str(directory))
    if not found:
        raise ScannerMissing(name)
    return found


class ScannerMissing(Exception):
    """The scanner's executable is not installed (not on PATH)."""


def authority(target: Target) -> str:
    """``host:port`` of the target, IPv6 in brackets (what every scanner here accepts)."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"{host}:{target.port}"


def interpreter_bin() -> Path:
    """The directory of the running interpreter: a scanner pip-installed into tundra's own
    virtualenv lives there, which need not be on PATH."""
    return Path(sys.executable).parent


class Scanner:
    """One public scanner. Subclasses set the class attributes and implement :meth:`scan`."""

    name: ClassVar[str]
    #: The command looked up on PATH.
    executable: ClassVar[str]
    #: The catalogue checks this scanner can give a verdict on.
    checks: ClassVar[frozenset[str]]
    #: How to install it (shown when it is missing).
    install_hint: ClassVar[str]
    #: The scanner's time budget in seconds (all its commands together).
    timeout: ClassVar[float] = 60.0
    #: Also look in the running interpreter's bin directory (tools installed with pip).
    python_tool: ClassVar[bool] = False

    def locate(self, env: Mapping[str, str], *, search_interpreter_bin: bool = True) -> str:
        extra = (interpreter_bin(),) if self.python_tool and search_interpreter_bin else ()
        return find_executable(self.executable, env, extra_dirs=extra)

    def not_applicable(self, job: Job) -> str | None:
        """Why the scanner cannot judge this target (None: it can)."""
        return None

    def scan(self, job: Job, tool: str) -> Findings:
        raise NotImplementedError
