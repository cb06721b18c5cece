"""Fixtures for the audit tests: a migrated database with a checkpoint key, per database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tundra.core.crypto.primitives import make_private_dir
from tundra.core.services import Services, build_services
from tundra.core.settings import Settings


@pytest.fixture
def audit_services(settings: Settings) -> Iterator[Services]:
    """Services on a migrated database with the checkpoint keys and an empty audit log."""
    make_private_dir(settings.home)
    if not settings.database_url:
        settings.sqlite_path.touch(mode=0o600)
    services = build_services(settings)
    services.db.migrate()
    services.audit.ensure_checkpoint_key()
    yield services
    services.close()
