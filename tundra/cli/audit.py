"""``tundra audit``: list, export, verify and checkpoint the tamper-evident audit log."""

# No `from __future__ import annotations` here: typer reads these annotations at start-up, and
# real objects spare it evaluating strings (about 5 ms per command group; bench/cli_startup.py).

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from tundra.cli.context import services
from tundra.cli.output import print_json, print_table, success
from tundra.core.errors import InvalidInput

app = typer.Typer(
    help="List, export, verify and checkpoint the audit log.",
    no_args_is_help=True,
    add_completion=False,
    epilog="Example: tundra audit verify --checkpoint /mnt/offsite/1234.note",
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
SinceOption = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="From this ISO 8601 date or time (inclusive; UTC unless an offset is given).",
    ),
]
UntilOption = Annotated[
    str | None, typer.Option("--until", help="Up to this ISO 8601 date or time (exclusive).")
]


@app.command("list", epilog="Example: tundra audit list --since 2024-05-01 --action 'identity:*'")
def list_(
    since: SinceOption = None,
    until: UntilOption = None,
    actor: Annotated[
        str | None,
        typer.Option(
            "--actor",
            help="Only this actor (user:NAME, token:PREFIX, cli:USER…); 'x*' for a prefix.",
        ),
    ] = None,
    action: Annotated[
        str | None,
        typer.Option(
            "--action", help="Only this action (fleet:server:create…); 'identity:*' for a prefix."
        ),
    ] = None,
    resource: Annotated[
        str | None,
        typer.Option(
            "--resource", help="Only this resource (server:web-1…); 'server:*' for a prefix."
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many rows.")] = 50,
    after: Annotated[
        int | None,
        typer.Option("--after", help="Rows after this seq, oldest first (the pagination cursor)."),
    ] = None,
    before: Annotated[
        int | None, typer.Option("--before", help="Rows before this seq, newest first.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List audit rows, newest first (or oldest first from --after)."""
    rows = services().audit.list(
        since=since,
        until=until,
        actor=actor,
        action=action,
        resource=resource,
        limit=limit,
        after_seq=after,
        before_seq=before,
        newest_first=after is None,
    )
    if as_json:
        print_json([row.as_dict() for row in rows])
        return
    print_table(
        "Audit log",
        ["seq", "time (UTC)", "actor", "action", "resource", "details"],
        [
            (
                row.seq,
                row.occurred_at[:19].replace("T", " "),
                row.actor,
                row.action,
                row.resource,
                _short(row.details),
            )
            for row in rows
        ],
    )


def _short(details: Any, width: int = 60) -> str:
    text = json.dumps(details, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[IO[Any]]:
    """Standard output, or ``path`` written via a temporary file so a failed export never
    looks like a complete one. The file is created 0600: an audit log is nobody else's read."""
    if path is None:
        yield getattr(sys.stdout, "buffer", sys.stdout)
        sys.stdout.flush()
        return
    tmp = path.with_name(f".{path.name}.partial")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise InvalidInput(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@app.command(
    "export",
    epilog="Example: tundra audit export --format jsonl --since 2024-05-01 "
    "--output audit-may.jsonl",
)
def export(
    fmt: Annotated[str, typer.Option("--format", help="jsonl, csv or json.")] = "jsonl",
    since: SinceOption = None,
    until: UntilOption = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file instead of standard output."),
    ] = None,
) -> None:
    """Export the log with its hashes, so the file can be verified on its own."""
    if fmt not in {"jsonl", "csv", "json"}:
        raise InvalidInput(f"unknown --format {fmt!r}", hint="use jsonl, csv or json")
    with _output(output) as out:
        count = services().audit.export(out, format=fmt, since=since, until=until)
    if output is not None:
        success(f"{count} rows exported to {output}")


@app.command(
    "verify",
    epilog="Example: tundra audit verify --file audit.jsonl "
    "--checkpoint 1234.note --vkey audit.vkey",
)
def verify(
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", help="Verify this export file (jsonl, csv or json) instead of the database."
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="Also check against this signed checkpoint note."),
    ] = None,
    vkey: Annotated[
        Path | None,
        typer.Option(
            "--vkey", help="Verifier key for the checkpoint (default: the one in the home)."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Prove the chain intact; exit 1 naming the first bad seq and why if it is not."""
    result = services().audit.verify(file=file, checkpoint=checkpoint, vkey=vkey)
    if as_json:
        print_json(result.as_dict())
    elif result.ok:
        success(result.message)
    result.raise_for_damage()


@app.command("checkpoint", epilog="Example: tundra audit checkpoint --output /mnt/offsite/now.note")
def checkpoint(
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the note here (default: $TUNDRA_HOME/checkpoints/SEQ.note).",
        ),
    ] = None,
) -> None:
    """Sign the current head of the log; keep the note somewhere the database cannot reach."""
    path = services().audit.checkpoint(out=output)
    sys.stdout.write(f"{path}\n")
    success(f"checkpoint written to {path}")
