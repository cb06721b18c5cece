"""The top-level command group: lazy sub-commands, global options, one error boundary."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from tundra import __version__
from tundra.cli.exit import ExitStatus, exit_status_for
from tundra.core.errors import TundraError

#: Command name -> (module, help). Modules expose ``app`` (a typer.Typer).
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("tundra.cli.init", "Create $TUNDRA_HOME: master key, database, keyring, first admin."),
    "login": ("tundra.cli.login", "Open a short re-authentication window for sensitive commands."),
    "server": ("tundra.cli.servers", "Manage the fleet inventory."),
    "user": ("tundra.cli.users", "Manage users, passwords and TOTP."),
    "token": ("tundra.cli.tokens", "Create, list and revoke API tokens."),
    "key": ("tundra.cli.keys", "Inspect, verify and rotate the master key and data keys."),
    "audit": ("tundra.cli.audit", "List, export, verify and checkpoint the audit log."),
    "serve": ("tundra.cli.serve", "Run the control plane: HTTPS panel and API, HTTP redirect."),
    "tls": ("tundra.cli.tls", "Inspect and renew the panel's TLS certificate."),
    "ca": ("tundra.cli.ca", "Inspect and rotate the internal CA that signs agent certificates."),
    "agent": ("tundra.cli.agent", "Enroll and run the agent on a managed host; revoke an agent."),
    "acceptance": ("tundra.cli.acceptance", "Prove a live deployment meets the security spec."),
    "completions": ("tundra.cli.completions", "Print the shell completion script."),
}


class LazyGroup(click.Group):
    """A group whose sub-commands are imported only when used, with Tundra's error boundary."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """One boundary: every expected error becomes one line on stderr and an exit code."""
        try:
            # Without standalone mode click returns a command's exit code (typer.Exit) instead
            # of exiting; pass it on.
            result = super().main(
                args=args,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except TundraError as exc:
            _fail(str(exc), exit_status_for(exc))
        except click.exceptions.Abort:
            _fail("aborted", ExitStatus.FAILURE)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                sys.stderr.write(exc.ctx.get_usage() + "\n")
            _fail(exc.format_message(), ExitStatus.USAGE)
        except KeyboardInterrupt:
            _fail("interrupted", ExitStatus.FAILURE)
        except BrokenPipeError:
            sys.exit(0)
        except Exception as exc:
            if os.environ.get("TUNDRA_DEBUG"):
                raise
            _fail(
                f"internal error: {type(exc).__name__}: {exc} (set TUNDRA_DEBUG=1 for a "
                "traceback and please report it)",
                ExitStatus.INTERNAL,
            )
        sys.exit(result if isinstance(result, int) else 0)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        import typer.main

        module = importlib.import_module(COMMANDS[cmd_name][0])
        command = typer.main.get_command(module.app)
        command.name = cmd_name
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Example: tundra init && tundra server add web-1 --address 203.0.113.10",
)
@click.version_option(
    __version__, "-V", "--version", prog_name="tundra", message="%(prog)s %(version)s"
)
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    envvar="TUNDRA_HOME",
    help="Tundra home directory (default: $TUNDRA_HOME, /var/lib/tundra or XDG data).",
)
def cli(home: str | None) -> None:
    """Tundra: the control plane for Linux servers, secure by proof."""
    if home:
        os.environ["TUNDRA_HOME"] = home


def _fail(message: str, status: ExitStatus) -> None:
    sys.stderr.write(f"tundra: error: {message}\n")
    sys.exit(int(status))


def run(args: list[str] | None = None) -> None:
    """Run the CLI (the group's ``main`` holds the error boundary)."""
    cli.main(args=args, prog_name="tundra")
