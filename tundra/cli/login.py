"""``tundra login``: open the short re-authentication window sensitive commands need."""

# No `from __future__ import annotations` here: typer reads these annotations at start-up, and
# real objects spare it evaluating strings (about 5 ms per command group; bench/cli_startup.py).

import sys
from typing import Annotated

import typer

from tundra.cli import auth
from tundra.cli.context import principal, services
from tundra.cli.output import info, print_json, success
from tundra.core.errors import InvalidInput

app = typer.Typer(add_completion=False)


@app.command(
    "login",
    epilog="Example: tundra login --user alice   (or: pass show tundra | tundra login "
    "--password-stdin)",
)
def login_command(
    user: Annotated[
        str | None,
        typer.Option(
            "--user",
            "-u",
            help="Tundra user to authenticate as (default: cli_user, the user named "
            "like your Unix user, or the only administrator).",
        ),
    ] = None,
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin", help="Read the password from the first line of standard input."
        ),
    ] = False,
    totp: Annotated[
        str | None,
        typer.Option(
            "--totp",
            help="The current TOTP code, when the user has one (asked for at a terminal "
            "otherwise). A code is single-use, so it may appear on a command line.",
        ),
    ] = None,
    status: Annotated[
        bool,
        typer.Option(
            "--status", help="Show whether a window is open and for how long; change nothing."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Authenticate as an administrator; sensitive commands then run for a few minutes."""
    svc = services()
    if status:
        remaining = svc.reauth.window_remaining(principal())
        who = svc.reauth.stamped_user(principal()) if remaining is not None else None
        data = {
            "open": remaining is not None,
            "user": who,
            "remaining_seconds": None if remaining is None else int(remaining),
        }
        if as_json:
            print_json(data)
        elif remaining is None:
            info("no authentication window is open; run `tundra login`")
        else:
            info(f"authenticated as {who}; {int(remaining)} s left")
        return
    username = user or svc.reauth.default_cli_username()
    if password_stdin:

        def read_password() -> str:
            return sys.stdin.readline().rstrip("\r\n")
    elif auth.interactive():
        read_password = auth.prompt_password(username)
    else:
        raise InvalidInput("no terminal to ask for the password", hint="use --password-stdin")
    seconds = auth.login(
        svc,
        username,
        read_password,
        totp_code=totp,
        read_totp=auth.prompt_totp if auth.interactive() else None,
    )
    if as_json:
        print_json({"open": True, "user": username, "remaining_seconds": seconds})
    else:
        success(f"authenticated as {username}; sensitive commands allowed for {seconds} s")
