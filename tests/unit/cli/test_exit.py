"""ExitStatus is public API: numbers fixed, documented, and every error class mapped."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tundra.cli.exit import ExitStatus, exit_status_for
from tundra.core import errors

DOCS = Path(__file__).parents[3] / "docs" / "cli.md"

EXPECTED = {
    "SUCCESS": 0,
    "FAILURE": 1,
    "USAGE": 64,
    "DATA_ERROR": 65,
    "NOT_FOUND": 66,
    "AUTH_FAILED": 67,
    "UNAVAILABLE": 69,
    "INTERNAL": 70,
    "CONFLICT": 73,
    "THROTTLED": 75,
    "PERMISSION_DENIED": 77,
    "CONFIG": 78,
    "KEY_ERROR": 79,
}


def test_exit_codes_are_stable() -> None:
    assert {s.name: s.value for s in ExitStatus} == EXPECTED


def test_every_exit_code_is_documented() -> None:
    documented = dict(re.findall(r"^\| (\d+) \| `(\w+)` \|", DOCS.read_text(), re.MULTILINE))
    assert {name: int(code) for code, name in documented.items()} == EXPECTED


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


@pytest.mark.parametrize("cls", _subclasses(errors.TundraError), ids=lambda c: c.__name__)
def test_every_error_class_has_a_specific_exit_code(cls: type[errors.TundraError]) -> None:
    error = cls.__new__(cls)
    Exception.__init__(error, "x")
    assert exit_status_for(error) not in {ExitStatus.SUCCESS, ExitStatus.FAILURE} or (
        # A check or a command ran and found a problem: that is what FAILURE means.
        issubclass(cls, errors.IntegrityError | errors.CommandFailed)
    )


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.Throttled("x", retry_after=3), ExitStatus.THROTTLED),
        (errors.TokenInvalid("bad checksum"), ExitStatus.AUTH_FAILED),
        (errors.ReauthRequired("x"), ExitStatus.PERMISSION_DENIED),
        (errors.DecryptionFailed("x"), ExitStatus.KEY_ERROR),
        (errors.NotInitialized("x"), ExitStatus.CONFIG),
        (errors.IntegrityError("x"), ExitStatus.FAILURE),
    ],
)
def test_specific_errors_win_over_their_parents(
    error: errors.TundraError, status: ExitStatus
) -> None:
    assert exit_status_for(error) is status
