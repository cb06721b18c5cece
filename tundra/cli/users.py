"""``tundra user``: accounts, passwords and TOTP.

Passwords come only from a hidden prompt (asked twice) or standard input, never from an option:
an option ends up in the shell history and in ``ps`` output for every local user to read.
A new TOTP key takes effect only once a code from the app confirms it, asked for at the
terminal; ``--activate-now`` is the explicit exception for scripted provisioning.
"""

# No `from __future__ import annotations` here: typer reads these annotations at start-up, and
# real objects spare it evaluating strings (about 5 ms per command group; bench/cli_startup.py).

import base64
import sys
from typing import TYPE_CHECKING, Annotated

import click
import typer

from tundra.cli import auth
from tundra.cli.context import principal, services
from tundra.cli.output import info, print_fields, print_json, print_table, success, warn
from tundra.core.crypto.primitives import random_bytes
from tundra.core.errors import AuthenticationFailed, InvalidInput

if TYPE_CHECKING:
    from tundra.core.identity.totp import Enrollment

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
        bool,
        typer.Option(
            "--acceptance",
            help="A low-privilege account (never an administrator) for `tundra acceptance run`.",
        ),
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
    role = " (administrator)" if user.is_admin else " (acceptance)" if user.is_acceptance else ""
    success(f"user {user.name} created{role}")
    if generated:
        _show_generated(user.name, password)
    if user.is_acceptance:
        info(
            f"use it with: tundra acceptance run --url URL --user {user.name}"
            " --password-env VAR (the password in the variable VAR)"
        )


@app.command("list", epilog="Example: tundra user list --json")
def list_(as_json: JsonOption = False) -> None:
    """List users."""
    users = services().users.list()
    if as_json:
        print_json([u.as_dict() for u in users])
        return
    print_table(
        "Users",
        ["name", "admin", "acceptance", "TOTP", "status", "created"],
        [
            (
                u.name,
                "yes" if u.is_admin else "",
                "yes" if u.is_acceptance else "",
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


#: Codes a person may try at the enrolment prompt before the command gives up (storing nothing).
CONFIRM_TRIES = 3


def _show_enrollment(name: str, enrollment: "Enrollment", *, as_json: bool) -> None:
    if as_json:
        print_json(
            {"user": name, "otpauth_uri": enrollment.otpauth_uri, "secret": enrollment.secret_b32}
        )
        return
    import segno

    segno.make(enrollment.otpauth_uri, error="m").terminal(out=sys.stdout, compact=True)
    sys.stdout.write(f"{enrollment.otpauth_uri}\n")
    info("Scan the QR code (or enter the URI) in the authenticator app.")


def _prompt_code() -> str:
    # On stderr, so that with --json standard output holds exactly the JSON object.
    return str(click.prompt("Code shown by the authenticator app", err=True)).strip()


@totp_app.command(
    "enroll",
    epilog="Example: tundra user totp enroll alice   (scripted: --activate-now --json)",
)
def totp_enroll(
    name: NameArgument,
    as_json: JsonOption = False,
    activate_now: Annotated[
        bool,
        typer.Option(
            "--activate-now",
            help="Turn TOTP on at once, without a confirming code: for scripted provisioning"
            " (no terminal needed).",
        ),
    ] = False,
) -> None:
    """Show a new TOTP key (QR code, otpauth:// URI); it takes effect once a code confirms it."""
    # At a terminal, only an accepted code turns TOTP on. Without one, nothing is stored and the
    # command refuses, unless --activate-now asks for the key to be active at once (whoever runs
    # the script must load it into the app). A --code option cannot exist: no code is known
    # before the key is shown.
    svc = services()
    if activate_now:
        enrollment = svc.totp.enroll(principal(), name)
        _show_enrollment(name, enrollment, as_json=as_json)
        warn(
            f"TOTP is on for {name} now, unconfirmed: every login needs a code from here on;"
            " the secret is shown only now"
        )
        return
    # Stores nothing: a refused user name or an existing enrolment is reported before anything.
    enrollment = svc.totp.begin_enrollment(principal(), name)
    if not auth.interactive():
        raise InvalidInput(
            "no terminal to ask for a code from the authenticator app; nothing was changed",
            hint="run it at a terminal, or pass --activate-now to turn TOTP on without a code",
        )
    _show_enrollment(name, enrollment, as_json=as_json)
    info("Nothing is stored until a code is accepted (Ctrl-C abandons the enrolment).")
    for attempt in range(1, CONFIRM_TRIES + 1):
        try:
            svc.totp.complete_enrollment(principal(), name, enrollment.secret_b32, _prompt_code())
        except AuthenticationFailed as exc:
            if attempt == CONFIRM_TRIES:
                raise
            warn(exc.message)
            continue
        break
    success(f"TOTP is on for {name}: every login needs a code from the authenticator app")


@totp_app.command("disable", epilog="Example: tundra user totp disable alice")
def totp_disable(name: NameArgument) -> None:
    """Remove a user's TOTP secret (for a lost authenticator; enrol again afterwards)."""
    services().totp.disable(principal(), name)
    success(f"TOTP removed for {name}")
