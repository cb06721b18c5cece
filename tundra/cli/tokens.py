"""``tundra token``: create, list and revoke API and MCP tokens.

The plaintext is printed once, to standard output (so ``tundra token create … > file`` or a
pipe captures only the token), with the warning on standard error.
"""

# No `from __future__ import annotations` here: typer reads these annotations at start-up, and
# real objects spare it evaluating strings (about 5 ms per command group; bench/cli_startup.py).

import re
from datetime import timedelta
from typing import Annotated

import typer

from tundra.cli.auth import run_sensitive
from tundra.cli.context import principal, services
from tundra.cli.output import print_json, print_table, success, warn
from tundra.core.errors import InvalidInput

app = typer.Typer(
    help="Create, list and revoke API tokens.",
    no_args_is_help=True,
    add_completion=False,
    epilog="Example: tundra token create --name ci --scope servers:read",
)

_DURATION_RE = re.compile(r"([1-9][0-9]{0,5})([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
DEFAULT_EXPIRY = "90d"


def parse_expiry(text: str) -> timedelta | None:
    """``30d``, ``12h``, ``2w``…; ``never`` for a token that does not expire."""
    if text == "never":
        return None
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None:
        raise InvalidInput(
            f"invalid --expires {text!r}",
            hint="use a number and one of s m h d w (30d, 12h), or never",
        )
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


@app.command(
    "create",
    epilog="Example: tundra token create --name deploy --scope servers:write "
    "--server web-1 --expires 30d",
)
def create(
    name: Annotated[str, typer.Option("--name", help="What the token is for.")],
    scope: Annotated[
        list[str],
        typer.Option(
            "--scope",
            help="A scope (servers:read, servers:write, sites:read, sites:write, "
            "tokens:read, tokens:write, audit:read, users:read, admin); repeat for more.",
        ),
    ],
    server: Annotated[
        list[str] | None,
        typer.Option("--server", help="Restrict the token to this server; repeat for more."),
    ] = None,
    expires: Annotated[
        str, typer.Option("--expires", help="Lifetime: 30d, 12h, 2w… or never.")
    ] = DEFAULT_EXPIRY,
    kind: Annotated[
        str, typer.Option("--kind", help="api (REST API) or mcp (the MCP endpoint only).")
    ] = "api",
    owner: Annotated[
        str | None,
        typer.Option("--owner", help="User the token belongs to (default: the logged-in user)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a token and print it once (an admin-scope token needs `tundra login`)."""
    lifetime = parse_expiry(expires)
    created = run_sensitive(
        lambda: services().tokens.create(
            principal(),
            name=name,
            scopes=scope,
            servers=server or (),
            expires_in=lifetime,
            kind=kind,
            owner=owner,
        )
    )
    if as_json:
        print_json({**created.token.as_dict(), "token": created.plaintext})
    else:
        success(f"token {created.token.display_prefix} created for {created.token.owner}")
        typer.echo(created.plaintext)
    warn("this token will not be shown again; store it now")


@app.command("list", epilog="Example: tundra token list --all --json")
def list_(
    include_revoked: Annotated[bool, typer.Option("--all", help="Include revoked tokens.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List tokens (never their secret: only the display prefix)."""
    tokens = services().tokens.list(principal(), include_revoked=include_revoked)
    if as_json:
        print_json([t.as_dict() for t in tokens])
        return
    print_table(
        "API tokens",
        [
            "id",
            "prefix",
            "name",
            "owner",
            "kind",
            "scopes",
            "servers",
            "expires",
            "last used",
            "status",
        ],
        [
            (
                t.id,
                t.display_prefix,
                t.name,
                t.owner,
                t.kind,
                " ".join(t.scopes),
                " ".join(t.servers),
                (t.expires_at or "never")[:19],
                (t.last_used_at or "")[:19],
                t.status,
            )
            for t in tokens
        ],
    )


@app.command("revoke", epilog="Example: tundra token revoke tnd_live_AbCdEfGh")
def revoke(
    ref: Annotated[str, typer.Argument(help="Token id or display prefix.", metavar="ID_OR_PREFIX")],
) -> None:
    """Revoke a token: it is refused from the next request on."""
    token = services().tokens.revoke(principal(), ref)
    success(f"token {token.display_prefix} ({token.name}) revoked")
