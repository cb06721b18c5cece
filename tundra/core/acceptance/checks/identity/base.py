"""What every identity check shares: :class:`Inconclusive` (the check cannot decide), the
guard that turns it into an error outcome, the verdict from a list of problems, and the local
services a ``--local`` run may use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tundra.core.acceptance.context import RunContext
from tundra.core.acceptance.model import Outcome, errored, failed, passed

if TYPE_CHECKING:
    from tundra.core.services import Services


class Inconclusive(Exception):
    """The check cannot decide (login impossible, unexpected answer): an error result."""

    def __init__(self, message: str, **evidence: Any) -> None:
        super().__init__(message)
        self.message = message
        self.evidence = evidence


def services_of(ctx: RunContext) -> Services | None:
    return ctx.options.services if ctx.options.local else None


def _verdict(
    problems: list[str], ok: str, evidence: dict[str, Any], *, notes: Sequence[str] = ()
) -> Outcome:
    if notes:
        evidence["notes"] = list(notes)
    if problems:
        summary = problems[0] if len(problems) == 1 else f"{problems[0]} (+{len(problems) - 1})"
        return failed(summary, problems=problems, **evidence)
    return passed(ok, **evidence)


def _guard(fn: Callable[[RunContext], Outcome]) -> Callable[[RunContext], Outcome]:
    """Turn :class:`Inconclusive` into an error outcome with its evidence."""

    def run(ctx: RunContext) -> Outcome:
        try:
            return fn(ctx)
        except Inconclusive as exc:
            return errored(exc.message, **exc.evidence)

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run
