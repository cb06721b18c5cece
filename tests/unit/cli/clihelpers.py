"""Shared plumbing of the CLI tests: run `tundra …` through the real error boundary."""

from __future__ import annotations

import pytest
from click.testing import CliRunner, Result

from tundra.cli.app import cli
from tundra.core.services import Services

#: Refusal tables run on SQLite only: the database engine plays no part in them.
SQLITE_ONLY = pytest.mark.parametrize("database_url", [""], ids=["sqlite"])


def cli_env(services: Services) -> dict[str, str]:
    """The environment that points the CLI at ``services``' home and database."""
    s = services.settings
    return {
        "TUNDRA_HOME": str(s.home),
        "TUNDRA_DATABASE_URL": s.database_url,
        "TUNDRA_PASSWORD_PROFILE": "test",
    }


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, input=stdin)
