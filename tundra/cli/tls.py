"""``tundra tls``: the panel's certificate (internal CA or the operator's own)."""

# No `from __future__ import annotations` here: typer reads these annotations at start-up, and
# real objects spare it evaluating strings (about 5 ms per command group; bench/cli_startup.py).

from typing import Annotated

import typer

from tundra.cli.context import principal, services
from tundra.cli.output import info, print_fields, print_json, success

app = typer.Typer(
    help="Inspect and renew the panel's TLS certificate.",
    no_args_is_help=True,
    add_completion=False,
    epilog="Example: tundra tls status",
)


@app.command("status", epilog="Example: tundra tls status --json")
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show the panel certificate: names, validity, renewal, key file checks."""
    report = services().pki.status()
    if as_json:
        print_json(report.as_dict())
        return
    print_fields(
        "Panel TLS certificate",
        [
            ("source", report.source),
            ("certificate", report.cert_path),
            ("key", report.key_path),
            ("names", ", ".join(report.names)),
            ("not after", report.not_after),
            ("days left", report.days_left),
            ("renewal due", "yes" if report.renew_due else "no"),
            ("sha-256", report.fingerprint),
            ("issuer", report.issuer),
            ("key file", "; ".join(report.key_problems) or "ok"),
        ],
    )


@app.command("renew", epilog="Example: tundra tls renew --force")
def renew(
    force: Annotated[bool, typer.Option("--force", help="Renew even if not due.")] = False,
) -> None:
    """Issue a new panel certificate from the internal CA when due (or with --force)."""
    svc = services()
    if svc.pki.operator_managed:
        info("the panel uses the operator's certificate (tls_cert_file): renew it at its source")
        return
    if svc.pki.ensure_panel_cert(principal(), force=force):
        success(
            f"new panel certificate, valid until {svc.pki.status().not_after}; restart "
            "`tundra serve` to use it"
        )
    else:
        info("the panel certificate is not due for renewal (use --force to renew anyway)")
