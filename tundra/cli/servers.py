"""``tundra server``: the fleet inventory, join tokens, and commands to a server's agent."""

# No `from __future__ import annotations` here: typer reads these annotations at start-up, and
# real objects spare it evaluating strings (about 5 ms per command group; bench/cli_startup.py).

import sys
from typing import Annotated, Any

import typer

from tundra.cli.context import principal, services
from tundra.cli.exit import ExitStatus
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
    """Add a server and print its one-time join token (it stays pending until its agent
    enrolls with the token)."""
    server = services().servers.add(
        principal(), name=name, address=address, tags=tag or [], join_token=True
    )
    if as_json:
        print_json(server.as_dict())
        return
    success(f"server {server.name} added ({server.address}); status {server.status}")
    if server.join_token is not None:
        _print_join_token(server.join_token)


@app.command("token", epilog="Example: tundra server token web-1")
def token(
    name: Annotated[str, typer.Argument(help="Server name.")],
    as_json: JsonOption = False,
) -> None:
    """Make a new join token for a server (its earlier unused tokens stop working)."""
    join = services().enrollment.create_join_token(principal(), name)
    if as_json:
        print_json(join.as_dict())
        return
    _print_join_token(join)


def _print_join_token(join: Any) -> None:
    """The token on stdout (shown once), then how to use it."""
    typer.echo(f"Join token for {join.server_name} (shown once, valid until {join.expires_at}):")
    typer.echo(f"  {join.token}")
    typer.echo(f"On {join.server_name}, with the token in TUNDRA_JOIN_TOKEN, run as root:")
    typer.echo(f"  {join.enroll_command()}")


@app.command("list", epilog="Example: tundra server list --tag prod --json")
def list_(
    tag: Annotated[str | None, typer.Option("--tag", help="Only servers with this tag.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List servers with their agents' connection state, last contact and certificate expiry."""
    servers = services().servers.list(principal(), tag=tag)
    if as_json:
        print_json([s.as_dict() for s in servers])
        return
    print_table(
        "Servers",
        ["name", "address", "status", "agent", "last seen", "version", "cert expires", "tags"],
        [
            (
                s.name,
                s.address,
                s.status,
                s.connection or "none",
                _relative(s.agent.last_seen_at) if s.agent else "",
                s.agent.agent_version if s.agent else "",
                _relative(s.agent.cert_not_after) if s.agent else "",
                ", ".join(s.tags),
            )
            for s in servers
        ],
    )


@app.command("show", epilog="Example: tundra server show web-1 --json")
def show(
    name: Annotated[str, typer.Argument(help="Server name.")],
    as_json: JsonOption = False,
) -> None:
    """Show one server, its agent and the facts the agent reported."""
    from tundra.core.agents.models import facts_summary

    server = services().servers.get(principal(), name)
    if as_json:
        print_json(server.as_dict())
        return
    fields: list[tuple[str, Any]] = [
        ("id", server.id),
        ("name", server.name),
        ("address", server.address),
        ("tags", ", ".join(server.tags)),
        ("status", server.status),
        ("added", server.created_at),
        ("changed", server.updated_at),
        ("agent", server.connection or "none (not enrolled)"),
    ]
    agent = server.agent
    if agent is not None:
        fields += [
            ("agent id", agent.id),
            ("agent version", agent.agent_version),
            ("agent host", agent.hostname),
            ("enrolled", agent.enrolled_at),
            ("last seen", _when(agent.last_seen_at) or "never"),
            ("last address", agent.last_address or ""),
            ("cert serial", agent.cert_serial),
            ("cert expires", _when(agent.cert_not_after)),
        ]
        if agent.revoked_at:
            fields.append(("revoked", agent.revoked_at))
        fields += [(f"facts: {label}", value) for label, value in facts_summary(agent.facts)]
    print_fields(f"Server {server.name}", fields)


def _relative(iso: str | None) -> str:
    """How long ago (or from now) an ISO time is: ``12 s ago``, ``in 23 h``."""
    if not iso:
        return ""
    from tundra.core.clock import from_iso, now

    seconds = (now() - from_iso(iso)).total_seconds()
    span = abs(seconds)
    if span < 120:
        amount = f"{int(span)} s"
    elif span < 7200:
        amount = f"{int(span // 60)} min"
    elif span < 172800:
        amount = f"{int(span // 3600)} h"
    else:
        amount = f"{int(span // 86400)} d"
    return f"{amount} ago" if seconds >= 0 else f"in {amount}"


def _when(iso: str | None) -> str:
    """An ISO time to the second, and how far it is from now."""
    return f"{iso[:19]}Z ({_relative(iso)})" if iso else ""


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


# -- commands to the server's agent ------------------------------------------------------------

TimeoutOption = Annotated[
    float,
    typer.Option("--timeout", min=0.1, max=300.0, help="Seconds to wait for the agent's answer."),
]


def _run(name: str, type_: str, payload: dict[str, Any], timeout: float, as_json: bool) -> Any:
    """One signed command through the core; exits non-zero unless the agent succeeded."""
    record = services().commands.run(principal(), name, type_, payload, timeout=timeout)
    if as_json:
        print_json(record.as_dict())
    if record.status == "succeeded":
        return record
    if record.status == "failed":
        message, status = f"{name}: the command failed: {record.error}", ExitStatus.FAILURE
    elif record.status == "refused":
        message = f"{name}: the agent refused the command: {record.error}"
        status = ExitStatus.PERMISSION_DENIED
    else:
        # Queued or sent with no answer in time, or expired: try again later (EX_TEMPFAIL).
        message = (
            f"{name}: no answer from the agent within {timeout:g} s (command {record.status}; "
            f"is it connected? see `tundra server show {name}`)"
        )
        status = ExitStatus.THROTTLED
    sys.stderr.write(f"tundra: error: {message}\n")
    raise typer.Exit(int(status))


@app.command("ping", epilog="Example: tundra server ping web-1 --timeout 5")
def ping(
    name: Annotated[str, typer.Argument(help="Server name.")],
    timeout: TimeoutOption = 10.0,
    as_json: JsonOption = False,
) -> None:
    """Round-trip a signed ping to the server's agent and print the time it took."""
    record = _run(name, "ping", {}, timeout, as_json)
    if not as_json:
        typer.echo(f"pong from {name}: {record.round_trip_ms:.1f} ms")


@app.command("facts", epilog="Example: tundra server facts web-1 --json")
def facts(
    name: Annotated[str, typer.Argument(help="Server name.")],
    timeout: TimeoutOption = 10.0,
    as_json: JsonOption = False,
) -> None:
    """Ask the server's agent for fresh facts: OS, kernel, CPU, memory, disk, uptime, load."""
    from tundra.core.agents.models import facts_summary

    record = _run(name, "facts", {}, timeout, as_json)
    if not as_json:
        print_fields(f"Facts of {name}", facts_summary(record.output or {}))


@app.command("service-status", epilog="Example: tundra server service-status web-1 nginx")
def service_status(
    name: Annotated[str, typer.Argument(help="Server name.")],
    unit: Annotated[str, typer.Argument(help="systemd unit (.service is added when absent).")],
    timeout: TimeoutOption = 10.0,
    as_json: JsonOption = False,
) -> None:
    """Ask the server's agent for the state of one systemd unit."""
    record = _run(name, "service.status", {"unit": unit}, timeout, as_json)
    if not as_json:
        output = dict(record.output or {})
        print_fields(
            f"{output.get('unit', unit)} on {name}",
            [(key.replace("_", " "), value) for key, value in output.items() if key != "unit"],
        )
