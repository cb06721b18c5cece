"""Fixtures for the identity tests: a second user, a KV of each kind, changed settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from idhelpers import BOB, BOB_PASSWORD

from tundra.core.principal import SYSTEM
from tundra.core.services import Services


@pytest.fixture
def with_settings(services: Services) -> Iterator[Callable[..., Services]]:
    """A factory: the same home and KV with some settings changed (closed afterwards)."""
    made: list[Services] = []

    def make(base: Services | None = None, **changes: Any) -> Services:
        base = base or services
        other = Services(replace(base.settings, **changes))
        other.kv = base.kv  # type: ignore[misc]
        made.append(other)
        return other

    yield make
    for other in made:
        other.__dict__.pop("kv", None)  # owned by the base container
        other.close()


@pytest.fixture
def bob(services: Services):
    return services.users.add(SYSTEM, name=BOB, password=BOB_PASSWORD)


@pytest.fixture
def kv_services(services: Services, kv) -> Services:
    """``services`` whose KV store is the ``kv`` fixture (embedded and real Valkey)."""
    services.kv = kv  # type: ignore[misc]
    return services

