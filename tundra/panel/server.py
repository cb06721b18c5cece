"""``tundra serve``: the HTTPS panel/API listener and the HTTP→HTTPS redirect listener.

Both run in one process and one event loop. SIGTERM or SIGINT stops accepting, lets requests in
flight finish (up to :data:`GRACE_SECONDS`), runs the app's shutdown, and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

from tundra.core.errors import ConfigError
from tundra.core.principal import SYSTEM
from tundra.core.services import Services
from tundra.panel.app import create_app
from tundra.panel.redirect import RedirectToHttps
from tundra.panel.tls import server_context

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
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


class _Server(uvicorn.Server):
    """uvicorn.Server without its own signal handling: serve() coordinates both listeners."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("tundra.access", "tundra.panel", "tundra.serve"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


def serve(services: Services, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Run until SIGTERM/SIGINT. ``on_ready`` receives the panel URL once both listeners are up."""
    settings = services.settings
    https = Listen.parse(settings.panel_listen, setting="panel_listen")
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

        def stop() -> None:
            for server in servers:
                server.should_exit = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        tasks = [asyncio.create_task(server.serve()) for server in servers]
        while not all(server.started for server in servers):
            if any(task.done() for task in tasks):
                break
            await asyncio.sleep(0.05)
        if all(server.started for server in servers) and on_ready is not None:
            on_ready(https.url("https"))
        await asyncio.gather(*tasks)
        if not all(server.started for server in servers):
            raise ConfigError(
                "a listener could not start (is the address in use?)",
                hint="see the log above; change panel_listen / redirect_listen",
            )

    configure_logging()
    asyncio.run(main())
