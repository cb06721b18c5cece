"""Sensitive commands at the CLI: ask for the password when the re-auth window is closed.

``run_sensitive(fn)`` runs ``fn`` (one core call); if the core answers ReauthRequired and a
person is at the terminal, it asks for the password (and the TOTP code when one is needed),
opens the window through ``reauth.cli_login`` and runs ``fn`` once more. Without a terminal it
re-raises, and the CLI boundary prints one line with the hint to run ``tundra login`` first.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import click

from tundra.cli.context import principal, services
from tundra.cli.output import info
from tundra.core.errors import ReauthRequired, TotpRequired
from tundra.core.principal import PrincipalKind
from tundra.core.services import Services

T = TypeVar("T")


def interactive() -> bool:
    """Whether a person can answer a prompt (tests replace this)."""
    return sys.stdin.isatty()


def login(
    svc: Services,
    username: str,
    read_password: Callable[[], str],
    *,
    totp_code: str | None = None,
    read_totp: Callable[[], str] | None = None,
) -> int:
    """Authenticate ``username`` and open the CLI window; the window's length in seconds.

    When the account has TOTP and no code was given, ``read_totp`` is asked for one (or the
    TotpRequired error goes to the boundary when there is no way to ask).
    """
    password = read_password()
    try:
        grant = svc.reauth.cli_login(
            principal(), username=username, password=password, totp_code=totp_code
        )
    except TotpRequired as exc:
        if read_totp is None:
            exc.hint = "pass the current code with --totp CODE"
            raise
        grant = svc.reauth.cli_login(
            principal(), username=username, password=password, totp_code=read_totp()
        )
    return grant.seconds


# click's prompt, named as such: typer 0.26+ would swap in a private copy of click that click's
# CliRunner (the CLI tests) cannot answer. Both read a real terminal the same way.
def prompt_password(username: str) -> Callable[[], str]:
    return lambda: str(click.prompt(f"Password for {username}", hide_input=True))


def prompt_totp() -> str:
    return str(click.prompt("TOTP code")).strip()


def run_sensitive(fn: Callable[[], T]) -> T:
    """Run ``fn``; on ReauthRequired ask for the password at a terminal and retry once."""
    try:
        return fn()
    except ReauthRequired as exc:
        if not interactive() or principal().kind is not PrincipalKind.CLI:
            if not exc.hint:
                exc.hint = "run `tundra login` first"
            raise
        svc = services()
        username = svc.reauth.default_cli_username()
        info(f"This operation needs a recent authentication as {username}.")
        login(svc, username, prompt_password(username), read_totp=prompt_totp)
    return fn()
