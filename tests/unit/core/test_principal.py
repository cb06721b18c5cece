"""The CLI principal names the real Unix user, whatever the environment claims."""

from __future__ import annotations

import os
import pwd

import pytest

from tundra.core.principal import SYSTEM, cli_principal, unix_user


def test_cli_actor_is_the_effective_unix_user(monkeypatch: pytest.MonkeyPatch) -> None:
    real = pwd.getpwuid(os.geteuid()).pw_name
    for variable in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(variable, "somebody-else")
    assert unix_user() == real
    assert cli_principal().actor == f"cli:{real}"


def test_system_actor() -> None:
    assert SYSTEM.actor == "system"
