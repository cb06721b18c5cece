"""``tundra agent``: enroll and run the agent on a managed host; revoke an agent.

``enroll``, ``run`` and ``status`` run on the managed host: they read the agent's configuration
and state directory and never need ``$TUNDRA_HOME`` or the control plane's services. ``revoke``
is the control plane's side and goes through the core like every other command.
"""

# No `from __future__ import annotations` here: typer reads these annotations at start-up, and
# real objects spare it evaluating strings (about 5 ms per command group; bench/cli_startup.py).

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from tundra.agent.config import CONFIG_VARIABLE, DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR
from tundra.cli.output import info, print_fields, print_json, success, warn
from tundra.core.errors import InvalidFile, InvalidInput

#: Read when no --token… option is given.
TOKEN_VARIABLE = "TUNDRA_JOIN_TOKEN"  # noqa: S105 (a variable name, not a secret)

app = typer.Typer(
    help="Enroll and run the agent on a managed host; revoke an agent.",
    no_args_is_help=True,
    add_completion=False,
    epilog="Example: TUNDRA_JOIN_TOKEN=tjn1.… tundra agent enroll --url https://panel:8443",
)

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        envvar=CONFIG_VARIABLE,
        help=f"The agent's configuration file (${CONFIG_VARIABLE}).",
        dir_okay=False,
    ),
]


def read_token(token: str | None, token_env: str | None, token_file: Path | None) -> str:
    """The join token from exactly one source (default: $TUNDRA_JOIN_TOKEN)."""
    given = [source for source in (token, token_env, token_file) if source is not None]
    if len(given) > 1:
        raise InvalidInput("give only one of --token, --token-env and --token-file")
    if token is not None:
        warn(
            "a token on the command line lands in shell history and the process list; "
            "prefer --token-env or --token-file (it is one-time and expires in 15 minutes)"
        )
        return token
    if token_file is not None:
        try:
            text = sys.stdin.read() if str(token_file) == "-" else token_file.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidFile(f"cannot read the join token from {token_file}: {exc}") from None
        return text.strip()
    variable = token_env or TOKEN_VARIABLE
    value = os.environ.get(variable, "").strip()
    if not value:
        raise InvalidInput(
            f"no join token: ${variable} is not set",
            hint="make one on the control plane (tundra server add NAME --address … or tundra "
            f"server token NAME) and pass it in ${TOKEN_VARIABLE}, --token-env or --token-file",
        )
    return value


@app.command(
    "enroll",
    epilog="Example: TUNDRA_JOIN_TOKEN=tjn1.… tundra agent enroll --url https://panel:8443",
)
def enroll(
    url: Annotated[str, typer.Option("--url", help="The panel's base URL (https://HOST:PORT).")],
    token_env: Annotated[
        str | None,
        typer.Option("--token-env", help=f"Read the token from this variable ({TOKEN_VARIABLE})."),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="Read the token from this file ('-' for stdin)."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", help="The token itself (lands in shell history: avoid)."),
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG_PATH,
    state_dir: Annotated[
        Path,
        typer.Option("--state-dir", help="Where the key and certificates go (made 0700)."),
    ] = DEFAULT_STATE_DIR,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file",
            help="Also trust this CA for the panel's HTTPS (an operator certificate from a "
            "private CA); the internal CA is pinned by the token.",
            dir_okay=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Enroll this host with a one-time join token: key pair, certificate, configuration."""
    from tundra.agent.enroll import enroll as run_enrollment

    result = run_enrollment(
        url=url,
        token=read_token(token, token_env, token_file),
        config_path=config,
        state_dir=state_dir.absolute(),
        ca_file=ca_file,
    )
    if as_json:
        print_json(
            {
                **result.config.as_dict(),
                "config_path": str(result.config_path),
                "cert_not_after": result.cert_not_after.isoformat(),
                "ca_fingerprints": result.ca_fingerprints,
                "command_key_ids": result.command_key_ids,
            }
        )
        return
    success(
        f"enrolled as server {result.config.server_name} (agent {result.config.agent_id}); "
        f"certificate valid until {result.cert_not_after:%Y-%m-%d %H:%M} UTC"
    )
    info(f"configuration: {result.config_path}; state: {result.config.state_dir}")
    info(
        f"next: systemctl enable --now tundra-agent (or: tundra agent run --config {config}); "
        f"it dials {result.config.gateway}"
    )


@app.command("run", epilog="Example: tundra agent run --config /etc/tundra/agent.toml")
def run(config: ConfigOption = DEFAULT_CONFIG_PATH) -> None:
    """Run the agent until SIGTERM/SIGINT: dial the gateway, heartbeat, execute signed commands."""
    from tundra.agent.daemon import run as run_daemon

    raise typer.Exit(run_daemon(config))


@app.command("status", epilog="Example: tundra agent status --json")
def status(
    config: ConfigOption = DEFAULT_CONFIG_PATH,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show this host's agent: identity, gateway, certificate expiry, file problems.

    Exits 1 when something needs fixing.
    """
    from tundra.agent.config import load_config
    from tundra.agent.state import agent_status

    report = agent_status(load_config(config), config)
    if as_json:
        print_json(report.as_dict())
    else:
        print_fields(
            "Tundra agent",
            [
                ("server", report.server_name),
                ("agent id", report.agent_id),
                ("gateway", report.gateway),
                ("panel", report.panel_url),
                ("configuration", report.config_path),
                ("state directory", report.state_dir),
                ("certificate serial", report.cert_serial),
                ("not after", report.cert_not_after),
                ("days left", report.cert_days_left),
                ("renewal at", report.renew_at),
                ("renewal due", "yes" if report.renewal_due else "no"),
                ("trusted CAs", ", ".join(f[:16] for f in report.ca_fingerprints)),
                ("command keys", ", ".join(report.command_key_ids)),
                ("problems", "; ".join(report.problems) or "none"),
            ],
        )
    if report.problems:
        raise typer.Exit(1)


@app.command("revoke", epilog="Example: tundra agent revoke web-1 --yes")
def revoke(
    name: Annotated[str, typer.Argument(help="The server whose agent to revoke.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Revoke a server's agent on the control plane: its next call to the gateway is refused."""
    from tundra.cli.auth import run_sensitive
    from tundra.cli.context import principal, services

    if not yes:
        typer.confirm(
            f"Revoke the agent of {name}? It must be enrolled again to reconnect.", abort=True
        )
    agent = run_sensitive(lambda: services().agents.revoke(principal(), name))
    success(
        f"agent {agent.id} of {agent.server_name} revoked; its certificate is refused from the "
        "next call on"
    )
