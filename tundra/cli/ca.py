"""``tundra ca``: the internal CA that signs agent (and panel, gateway) certificates."""

# No `from __future__ import annotations` here: typer reads these annotations at start-up, and
# real objects spare it evaluating strings (about 5 ms per command group; bench/cli_startup.py).

from typing import Annotated

import typer

from tundra.cli.context import principal, services
from tundra.cli.output import print_fields, print_json, success

app = typer.Typer(
    help="Inspect and rotate the internal CA that signs agent certificates.",
    no_args_is_help=True,
    add_completion=False,
    epilog="Example: tundra ca status",
)


@app.command("status", epilog="Example: tundra ca status --json")
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show the active CA and any previous one still trusted (or retired)."""
    infos = services().pki.ca_status()
    if as_json:
        print_json([info.as_dict() for info in infos])
        return
    for info in infos:
        print_fields(
            f"{info.status.capitalize()} CA",
            [
                ("sha-256", info.fingerprint),
                ("trusted", "yes" if info.trusted else "no"),
                ("subject", info.subject),
                ("created", info.created_at),
                ("not after", info.not_after),
                ("retire at", info.retire_at or ""),
            ],
        )


@app.command("rotate", epilog="Example: tundra ca rotate --yes")
def rotate(
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the new CA as JSON.")] = False,
) -> None:
    """Make a new CA; the old one stays trusted for ca_overlap_hours (sensitive: needs a recent
    `tundra login`). Agents pick the new CA up when they next connect or renew."""
    from tundra.cli.auth import run_sensitive

    svc = services()
    if not yes:
        typer.confirm(
            f"Rotate the internal CA? Agents that do not connect within "
            f"{svc.settings.ca_overlap_hours} hours will have to enroll again.",
            abort=True,
        )
    info = run_sensitive(lambda: svc.pki.rotate_ca(principal()))
    if as_json:
        print_json(info.as_dict())
        return
    success(
        f"new CA {info.fingerprint[:16]}… is active; the previous one stays trusted for "
        f"{svc.settings.ca_overlap_hours} hours. Restart `tundra serve` to serve the new panel "
        "certificate (the gateway picks its new certificate up by itself)."
    )
