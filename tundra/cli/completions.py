"""``tundra completions``: print a shell completion script (completions/ is generated here)."""

# No `from __future__ import annotations` here: typer reads these annotations at start-up, and
# real objects spare it evaluating strings (about 5 ms per command group; bench/cli_startup.py).

from enum import StrEnum
from typing import Annotated

import typer

app = typer.Typer(add_completion=False)


class Shell(StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def script(shell: str) -> str:
    """The completion script for ``shell``, generated from the command tree by click."""
    from click.shell_completion import get_completion_class

    from tundra.cli.app import cli

    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - Shell limits the choices
        raise ValueError(shell)
    return cls(cli, {}, "tundra", "_TUNDRA_COMPLETE").source()


@app.command(
    "completions", epilog="Example: tundra completions bash > /etc/bash_completion.d/tundra"
)
def completions(shell: Annotated[Shell, typer.Argument(help="bash, zsh or fish.")]) -> None:
    """Print the completion script for SHELL."""
    typer.echo(script(shell.value), nl=False)
