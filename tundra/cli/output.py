"""Rendering: JSON for scripts, rich tables for people, one-line messages on stderr.

rich is imported only when a table or a coloured message is drawn, so ``--json`` stays fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    Console().print(table)


def print_fields(title: str, fields: Sequence[tuple[str, Any]]) -> None:
    """A key/value panel for ``show`` commands."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in fields:
        table.add_row(key, "" if value is None else str(value))
    Console().print(table)


def success(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[green]✓[/green] {message}", highlight=False)


def warn(message: str) -> None:
    sys.stderr.write(f"tundra: warning: {message}\n")


def info(message: str) -> None:
    sys.stderr.write(message + "\n")
