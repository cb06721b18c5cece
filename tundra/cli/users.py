"""``tundra user``: accounts, passwords and TOTP.

Passwords come only from a hidden prompt (asked twice) or standard input, never from an option:
an option ends up in the shell history and in ``ps`` output for every local user to read.
"""

from __future__ import annotations

import base64
import sys
from typing import Annotated

import click
import typer

from tundra.cli import auth
from tundra.cli.context import principal, services
from tundra.cli.output import info, print_fields, print_json, print_table, success, warn
from tundra.core.crypto.primitives import random_bytes
from tundra.core.errors import InvalidInput

app = typer.Typer(
    help="Manage users, passwords and TOTP.",
    no_args_is_help=True,
    add_completion=False,
    epilog="Example: tundra user add bob --password-stdin",
)
totp_app = typer.Typer(
    help="Enrol or remove a user's TOTP authenticator.",
    no_args_is_help=True,
    add_completion=False,
    epilog="Example: tundra user totp enroll alice",
)
app.add_typer(totp_app, name="totp")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
NameArgument = Annotated[str, typer.Argument(help="User name.")]
PasswordStdin = Annotated[
    bool,
    typer.Option(
        "--password-stdin", help="Read the password from the first line of standard input."
    ),
]


def _new_password(name: str, *, from_stdin: bool, generate: bool) -> tuple[str, bool]:
    """The new password and whether it was generated (and so must be shown once)."""
    if from_stdin and generate:
        raise InvalidInput("use either --password-stdin or --generate-password, not both")
    if generate:
        # 18 random bytes: 24 URL-safe characters, 144 bits.
        return base64.urlsafe_b64encode(random_bytes(18)).decode("ascii"), True
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n"), False
    if not auth.interactive():
        raise InvalidInput(
            "no terminal to ask for the password",
            hint="use --password-stdin or --generate-password",
        )
    return str(
        click.prompt(f"New password for {name}", hide_input=True, confirmation_prompt=True)
    ), False


def _show_generated(name: str, password: str) -> None:
    sys.stdout.write(f"{password}\n")
    warn(f"this is {name}'s password and it will not be shown again; store it now")


@app.command("add", epilog="Example: tundra user add bob --generate-password")
def add(
    name: NameArgument,
    admin: Annotated[bool, typer.Option("--admin", help="Make the user an administrator.")] = False,
    acceptance: Annotated[
        bool, typer.Option("--acceptance", help="The account `tundra acceptance run` logs in with.")
    ] = False,
    password_stdin: PasswordStdin = False,
    generate_password: Annotated[
        bool, typer.Option("--generate-password", help="Generate a password and print it once.")
    ] = False,
) -> None:
    """Create a user (at least 12 characters of password, not the user name)."""
    password, generated = _new_password(name, from_stdin=password_stdin, generate=generate_password)
    user = services().users.add(
        principal(), name=name, password=password, is_admin=admin, is_acceptance=acceptance
    )
    success(f"user {user.name} created" + (" (administrator)" if user.is_admin else ""))
    if generated:
        _show_generated(user.name, password)


@app.command("list", epilog="Example: tundra user list --json")
def list_(as_json: JsonOption = False) -> None:
    """List users."""
    users = services().users.list()
    if as_json:
        print_json([u.as_dict() for u in users])
        return
    print_table(
        "Users",
        ["name", "admin", "TOTP", "status", "created"],
        [
            (
                u.name,
                "yes" if u.is_admin else "",
                "yes" if u.totp_enrolled else "",
                "disabled" if u.disabled else "enabled",
                u.created_at[:19],
            )
            for u in users
        ],
    )


@app.command("show", epilog="Example: tundra user show alice --json")
def show(name: NameArgument, as_json: JsonOption = False) -> None:
    """Show one user (never the password hash or the TOTP secret)."""
    user = services().users.get(name)
    if as_json:
        print_json(user.as_dict())
        return
    print_fields(f"User {user.name}", list(user.as_dict().items()))


@app.command("passwd", epilog="Example: tundra user passwd alice")
def passwd(
    name: NameArgument,
    password_stdin: PasswordStdin = False,
    generate_password: Annotated[
        bool, typer.Option("--generate-password", help="Generate a password and print it once.")
    ] = False,
) -> None:
    """Set a user's password."""
    password, generated = _new_password(name, from_stdin=password_stdin, generate=generate_password)
    services().users.set_password(principal(), name, password)
    success(f"password of {name} changed")
    if generated:
        _show_generated(name, password)


@app.command("disable", epilog="Example: tundra user disable bob")
def disable(name: NameArgument) -> None:
    """Disable a user: no login, and their API tokens stop working."""
    services().users.disable(principal(), name)
    success(f"user {name} disabled")


@app.command("enable", epilog="Example: tundra user enable bob")
def enable(name: NameArgument) -> None:
    """Enable a disabled user again."""
    services().users.enable(principal(), name)
    success(f"user {name} enabled")


@totp_app.command("enroll", epilog="Example: tundra user totp enroll alice")
def totp_enroll(name: NameArgument, as_json: JsonOption = False) -> None:
    """Give a user a TOTP secret and show it once, as a QR code and an otpauth:// URI."""
    enrollment = services().totp.enroll(principal(), name)
    if as_json:
        print_json(
            {"user": name, "otpauth_uri": enrollment.otpauth_uri, "secret": enrollment.secret_b32}
        )
    else:
        import segno

        segno.make(enrollment.otpauth_uri, error="m").terminal(out=sys.stdout, compact=True)
        sys.stdout.write(f"{enrollment.otpauth_uri}\n")
        info("Scan the QR code (or enter the URI) in the authenticator app.")
    warn("the TOTP secret is shown only now; it is required at every login from here on")


@totp_app.command("disable", epilog="Example: tundra user totp disable alice")
def totp_disable(name: NameArgument) -> None:
    """Remove a user's TOTP secret (for a lost authenticator; enrol again afterwards)."""
    services().totp.disable(principal(), name)
    success(f"TOTP removed for {name}")
