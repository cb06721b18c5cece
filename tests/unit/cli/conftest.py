"""Fixtures of the CLI tests (helpers to import live in clihelpers.py)."""

from __future__ import annotations

import pytest
from clihelpers import cli_env

from tundra.core.services import Services


@pytest.fixture
def env(services: Services) -> dict[str, str]:
    return cli_env(services)
