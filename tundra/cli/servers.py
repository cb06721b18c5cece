"""``tundra server``: the fleet inventory."""

# No `from __future__ import annotations` here: typer reads these annotations at start-up, and
# real objects spare it evaluating strings (about 5 ms per command group; bench/cli_startup.py).

from typing import Annotated

import typer

from tundra.cli.context import principal, services
from tundra.cli.output import print_fields, print_json, print_table, success

app = typer.Typer(
    help="Manage the fleet inventory.",
    no_args_is_help=True,
    add_completion=False,
    epilog="Example: tundra server add web-1 --address 203.0.113.10 --tag prod",
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command("add", epilog="Example: tundra server add web-1 --address 203.0.113.10 --tag prod")
def add(
    name: Annotated[str, typer.Argument(help="Server name: lowercase letters, digits, '.', '-'.")],
    address: Annotated[str, typer.Option("--address", help="IP address or DNS name.")],
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag; repeat for more.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Add a server to the inventory (it stays pending until its agent enrolls)."""
    server = services().servers.add(principal(), name=name, address=address, tags=tag or [])
    if as_json:
        print_json(server.as_dict())
    else:
        success(f"server {server.name} added ({server.address}); status {server.status}")


@app.command("list", epilog="Example: tundra server list --tag prod --json")
def list_(
    tag: Annotated[str | None, typer.Option("--tag", help="Only servers with this tag.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List servers."""
    servers = services().servers.list(principal(), tag=tag)
    if as_json:
        print_json([s.as_dict() for s in servers])
        return
    print_table(
        "Servers",
        ["name", "address", "status", "tags", "added"],
        [(s.name, s.address, s.status, ", ".join(s.tags), s.created_at[:19]) for s in servers],
    )


@app.command("show", epilog="Example: tundra server show web-1 --json")
def show(
    name: Annotated[str, typer.Argument(help="Server name.")],
    as_json: JsonOption = False,
) -> None:
    """Show one server."""
    server = services().servers.get(principal(), name)
    if as_json:
        print_json(server.as_dict())
        return
    print_fields(
        f"Server {server.name}",
        [(k, ", ".join(v) if isinstance(v, list) else v) for k, v in server.as_dict().items()],
    )


@app.command("update", epilog="Example: tundra server update web-1 --address 203.0.113.11")
def update(
    name: Annotated[str, typer.Argument(help="Server name.")],
    address: Annotated[str | None, typer.Option("--address", help="New address.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Replace the tags.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Change a server's address or tags."""
    server = services().servers.update(principal(), name, address=address, tags=tag)
    if as_json:
        print_json(server.as_dict())
    else:
        success(f"server {server.name} updated")


@app.command("remove", epilog="Example: tundra server remove web-1 --yes")
def remove(
    name: Annotated[str, typer.Argument(help="Server name.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove a server (sensitive: needs a recent `tundra login`)."""
    from tundra.cli.auth import run_sensitive

    if not yes:
        typer.confirm(f"Remove server {name}?", abort=True)
    server = run_sensitive(lambda: services().servers.remove(principal(), name))
    success(f"server {server.name} removed")
