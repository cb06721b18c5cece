"""``tundra serve``: the HTTPS panel/API listener, the HTTP→HTTPS redirect listener and the
agent gateway (gRPC, mutual TLS 1.3; ``gateway_listen`` empty disables it).

All run in one process and one event loop. The gateway starts first (an agent may connect as soon
as the panel says it is ready). SIGTERM or SIGINT stops accepting, ends agent sessions (agents
reconnect with backoff), lets requests in flight finish (up to :data:`GRACE_SECONDS`), runs the
app's shutdown, and exits 0.
"""

from __future__ import annotations

# Before anything can import grpc: the gateway's TLS 1.2-blocking cipher list (tundra/gateway).
import tundra.gateway  # noqa: F401  # isort: skip

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import uvicorn

from tundra.core.errors import ConfigError
from tundra.core.principal import SYSTEM
from tundra.core.services import Services
from tundra.panel.app import create_app
from tundra.panel.redirect import RedirectToHttps
from tundra.panel.tls import server_context

if TYPE_CHECKING:
    from tundra.gateway.server import Gateway

GRACE_SECONDS = 10


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, setting: str) -> Listen:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ConfigError(f"{setting} {text!r} is not HOST:PORT")
        return cls(host.strip("[]"), int(port))

    def url(self, scheme: str) -> str:
        return f"{scheme}://{self.address()}"

    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class _Server(uvicorn.Server):
    """uvicorn.Server without its own signal handling: serve() coordinates both listeners."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("tundra.access", "tundra.panel", "tundra.serve", "tundra.gateway"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


def serve(
    services: Services,
    *,
    on_ready: Callable[[str], None] | None = None,
    on_gateway: Callable[[str], None] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT. ``on_gateway`` receives the gateway's HOST:PORT once it
    listens; ``on_ready`` the panel URL once every listener is up."""
    settings = services.settings
    https = Listen.parse(settings.panel_listen, setting="panel_listen")
    grpc_listen = (
        Listen.parse(settings.gateway_listen, setting="gateway_listen")
        if settings.gateway_listen
        else None
    )
    services.pki.ensure_panel_cert(SYSTEM)
    context = server_context(services.pki.panel_cert_path, services.pki.panel_key_path)

    https_config = uvicorn.Config(
        create_app(services),
        host=https.host,
        port=https.port,
        log_config=None,
        server_header=False,
        proxy_headers=False,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACE_SECONDS,
    )
    https_config.load()
    https_config.ssl = context
    servers = [_Server(https_config)]
    if settings.redirect_listen:
        plain = Listen.parse(settings.redirect_listen, setting="redirect_listen")
        redirect_app = RedirectToHttps(
            https_port=settings.public_https_port, fallback_host=services.pki.hostnames()[0]
        )
        servers.append(
            _Server(
                uvicorn.Config(
                    redirect_app,
                    host=plain.host,
                    port=plain.port,
                    log_config=None,
                    server_header=False,
                    access_log=False,
                    lifespan="off",
                    timeout_graceful_shutdown=GRACE_SECONDS,
                )
            )
        )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        gateway: Gateway | None = None
        stopping: list[asyncio.Task[None]] = []

        def stop() -> None:
            for server in servers:
                server.should_exit = True
            if gateway is not None and not stopping:
                stopping.append(asyncio.create_task(gateway.stop(GRACE_SECONDS)))

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        if grpc_listen is not None:
            from tundra.gateway.server import Gateway

            starting = Gateway(services, listen=settings.gateway_listen)
            port = await starting.start()
            gateway = starting
            if on_gateway is not None:
                on_gateway(Listen(grpc_listen.host, port).address())
        tasks = [asyncio.create_task(server.serve()) for server in servers]
        try:
            while not all(server.started for server in servers):
                if any(task.done() for task in tasks):
                    break
                await asyncio.sleep(0.05)
            if all(server.started for server in servers) and on_ready is not None:
                on_ready(https.url("https"))
            await asyncio.gather(*tasks)
        finally:
            stop()
            await asyncio.gather(*stopping)
        if not all(server.started for server in servers):
            raise ConfigError(
                "a listener could not start (is the address in use?)",
                hint="see the log above; change panel_listen / redirect_listen",
            )

    configure_logging()
    asyncio.run(main())
