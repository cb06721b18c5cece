"""How CLI commands reach the core: one lazily built :class:`Services` per invocation."""

from __future__ import annotations

import click

from tundra.core.principal import Principal, cli_principal
from tundra.core.services import Services, build_services
from tundra.core.settings import load_settings


class CliState:
    def __init__(self) -> None:
        self._services: Services | None = None
        self.request_id: str | None = None

    @property
    def services(self) -> Services:
        if self._services is None:
            self._services = build_services(load_settings())
            root = click.get_current_context().find_root()
            root.call_on_close(self._services.close)
        return self._services


def state() -> CliState:
    root = click.get_current_context().find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


def services() -> Services:
    """The services of this invocation, built on first use."""
    return state().services


def principal() -> Principal:
    """The local operator, as the audit log names it: ``cli:UNIX_USER``."""
    return cli_principal()
