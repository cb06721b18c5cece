"""``tundra init``: create the home, the master key, the database and the first admin."""

# No `from __future__ import annotations` here: typer reads these annotations at start-up, and
# real objects spare it evaluating strings (about 5 ms per command group; bench/cli_startup.py).

import re
import sys
from typing import Annotated

import typer

from tundra.cli.context import services
from tundra.cli.output import info, print_json, success, warn

app = typer.Typer(add_completion=False)


def _default_admin() -> str:
    from tundra.core.principal import unix_user

    name = unix_user()
    return name if re.fullmatch(r"[a-z][a-z0-9_.-]{0,63}", name) and name != "root" else "admin"


@app.command(
    "init",
    epilog="Example: TUNDRA_HOME=./tundra-home tundra init --generate-password",
)
def init(
    admin: Annotated[
        str | None,
        typer.Option(
            "--admin", help="Name of the first administrator (default: your Unix user, or 'admin')."
        ),
    ] = None,
    generate_password: Annotated[
        bool,
        typer.Option("--generate-password", help="Generate the admin password and show it once."),
    ] = False,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the admin password from standard input.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report.")] = False,
) -> None:
    """Set up $TUNDRA_HOME. Safe to re-run: it finishes what is missing and never replaces a key."""
    from tundra.core import home

    svc = services()
    name = admin or _default_admin()
    password: str | None = None
    generated = False
    if home.needs_first_admin(svc):
        if generate_password:
            import secrets

            password, generated = secrets.token_urlsafe(18), True
        elif password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        elif sys.stdin.isatty():
            password = typer.prompt(
                f"Password for administrator {name}", hide_input=True, confirmation_prompt=True
            )
        else:
            from tundra.core.errors import InvalidInput

            raise InvalidInput(
                "no password for the first administrator",
                hint="use --generate-password or --password-stdin",
            )
    report = home.initialize(svc, admin_name=name, admin_password=password)
    if as_json:
        data = report.as_dict()
        if generated:
            data["generated_password"] = password
        print_json(data)
    else:
        for item in report.created:
            success(f"created {item}")
        if not report.created:
            info(f"{report.home} is already initialised; nothing to do")
        if generated:
            info(f"\nAdministrator: {name}\nPassword:      {password}\n")
            warn("this password is shown once; store it in your password manager now")
        info(f"home: {report.home}  database: {report.database}")
        if report.created and "master key" in report.created:
            warn(
                f"back up {svc.settings.master_key_path} somewhere safe: without it every "
                "encrypted secret is lost"
            )
