"""``tundra key``: inspect, verify and rotate the master key and the data keys."""

# No `from __future__ import annotations` here: typer reads these annotations at start-up, and
# real objects spare it evaluating strings (about 5 ms per command group; bench/cli_startup.py).

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from tundra.cli.auth import run_sensitive
from tundra.cli.context import principal, services
from tundra.cli.exit import ExitStatus
from tundra.cli.output import print_fields, print_json, print_table, success, warn

app = typer.Typer(
    help="Inspect, verify and rotate the master key and data keys.",
    epilog="Example: tundra key status && tundra key verify",
    no_args_is_help=True,
    add_completion=False,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


@app.command("status", epilog="Example: tundra key status --json")
def status(as_json: JsonOption = False) -> None:
    """Show the master key file checks, the data key terms and how many values use each."""
    report = services().keys.status()
    if as_json:
        print_json(report.as_dict())
        return
    print_fields(
        "Keys",
        [
            ("master key", report.master_key_path),
            ("initialised", "yes" if report.initialized else "no"),
            ("active term", report.active_term),
            ("min decrypt term", report.min_decrypt_term),
            ("data rotation", _rotation_text(report.rotation)),
        ],
    )
    print_table(
        "Master key file",
        ["check", "ok", "detail"],
        [(c.name, "yes" if c.ok else "NO", c.detail) for c in report.file_checks],
    )
    print_table(
        "Terms",
        ["term", "state", "created"],
        [(t.term, t.state, t.created_at[:19]) for t in report.terms],
    )
    print_table(
        "Encrypted values per term",
        ["column", "term", "values"],
        [row for column, per_term in report.rows.items() for row in _term_rows(column, per_term)],
    )


def _term_rows(column: str, per_term: dict[int, int]) -> list[tuple[str, str, int]]:
    if not per_term:
        return [(column, "-", 0)]
    return [
        (column, str(term) if term else "invalid", count)
        for term, count in sorted(per_term.items())
    ]


def _rotation_text(state: dict[str, object] | None) -> str:
    if state is None:
        return "none"
    return (
        f"to term {state['target']} in progress: {state['done']}/{state['total']} values "
        "(re-run `tundra key rotate --data` to resume)"
    )


@app.command("verify", epilog="Example: tundra key verify && echo keys ok")
def verify(as_json: JsonOption = False) -> None:
    """Check the key file, the key-check value, every keyring entry and every encrypted value.

    Exits 1 when a problem is found.
    """
    report = services().keys.verify()
    if as_json:
        print_json(report.as_dict())
    elif report.ok:
        success(
            f"keys ok: {report.terms_checked} keyring terms, {report.values_checked} "
            "encrypted values decrypt"
        )
    else:
        for problem in report.problems:
            warn(problem)
    if not report.ok:
        sys.exit(int(ExitStatus.FAILURE))  # a check that found a problem, not an error


@app.command("rotate", epilog="Example: tundra login && tundra key rotate --data")
def rotate(
    data: Annotated[
        bool,
        typer.Option(
            "--data",
            help="Rotate the data keys (re-encrypt every value) instead of the master key.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Rotate the master key (re-wraps the keyring) or, with --data, the data keys.

    Sensitive: needs a recent `tundra login` (asked for at a terminal).

    Both are crash-safe. An interrupted data rotation resumes when run again.

    After a master key rotation, back up the new master.key at once.
    """
    svc, who = services(), principal()
    if not data:
        master = run_sensitive(lambda: svc.keys.rotate_master(who))
        if as_json:
            print_json(master.as_dict())
        else:
            success(
                f"master key rotated; {master.terms_rewrapped} keyring terms re-wrapped. "
                f"Back up {svc.settings.master_key_path} now: the old key is gone"
            )
        return
    with _progress(enabled=not as_json) as report:
        result = run_sensitive(lambda: svc.keys.rotate_data(who, progress=report))
    if as_json:
        print_json(result.as_dict())
    else:
        verb = "resumed and finished" if result.resumed else "finished"
        success(
            f"data key rotation {verb}: term {result.term} is active, "
            f"{result.rows_rewrapped} values re-encrypted, terms below {result.term} retired"
        )


@contextmanager
def _progress(*, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr fed by the core's (done, total) callback."""
    if not enabled:
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("re-encrypting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("rewrap", total=None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=max(total, 1))

        yield report
