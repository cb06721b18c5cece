"""``tundra serve``: run the control plane (HTTPS panel + API, HTTP redirect, agent gateway)."""

# No `from __future__ import annotations` here: typer reads these annotations at start-up, and
# real objects spare it evaluating strings (about 5 ms per command group; bench/cli_startup.py).

import typer

from tundra.cli.context import services
from tundra.cli.output import info

app = typer.Typer(add_completion=False)


@app.command("serve", epilog="Example: TUNDRA_HOME=./tundra-home tundra serve")
def serve() -> None:
    """Run the control plane until SIGTERM/SIGINT (graceful shutdown)."""
    from tundra.core.home import require_initialized
    from tundra.panel.server import serve as run_server

    svc = services()
    require_initialized(svc)

    def ready(url: str) -> None:
        info(
            f"Tundra is serving {url}/ (TLS 1.3). Log in with an administrator account; "
            f"the internal CA certificate is {svc.pki.ca_cert_path}."
        )

    def gateway_ready(address: str) -> None:
        info(
            f"The agent gateway listens on {address} (gRPC, mutual TLS 1.3); agents dial "
            f"{svc.pki.gateway_address()}."
        )

    run_server(svc, on_ready=ready, on_gateway=gateway_ready)
