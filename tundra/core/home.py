"""Setting up ``$TUNDRA_HOME``: idempotent, and never destroys or replaces a key.

Each step checks before it acts, so ``tundra init`` can be re-run after an interruption and
finishes what is missing. A master key is created only when neither the key file nor a key-check
value exists: a database that expects a key which is missing means the key was lost, and creating
a new one would orphan every secret, so that case is refused with the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tundra.core.audit.actions import Action
from tundra.core.crypto.primitives import make_private_dir
from tundra.core.principal import SYSTEM
from tundra.core.services import Services
from tundra.core.uow import unit_of_work


@dataclass
class InitReport:
    home: str
    database: str
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    admin_name: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "home": self.home,
            "database": self.database,
            "created": self.created,
            "existing": self.existing,
            "admin": self.admin_name,
        }


def is_initialized(services: Services) -> bool:
    settings = services.settings
    return settings.master_key_path.exists() and services.db.schema_version() > 0


def initialize(
    services: Services, *, admin_name: str | None, admin_password: str | None
) -> InitReport:
    """Create whatever of the home is missing. ``admin_password`` is needed only without users."""
    settings = services.settings
    report = InitReport(home=str(settings.home), database=settings.database_label)

    make_private_dir(settings.home)
    if not settings.database_url and not settings.sqlite_path.exists():
        settings.sqlite_path.touch(mode=0o600)
    applied = services.db.migrate()
    (report.created if applied else report.existing).append("database schema")

    if services.keys.create_master_key_if_missing():
        report.created.append("master key")
    else:
        report.existing.append("master key")
    if services.keys.initialize_keyring(SYSTEM):
        report.created.append("keyring and key-check value")
    else:
        report.existing.append("keyring and key-check value")

    if services.pki.ensure_ca(SYSTEM):
        report.created.append("internal CA")
    else:
        report.existing.append("internal CA")
    if services.pki.ensure_panel_cert(SYSTEM):
        report.created.append("panel TLS certificate")
    else:
        report.existing.append("panel TLS certificate")

    if services.command_signer.ensure_key(SYSTEM):
        report.created.append("command signing key")
    else:
        report.existing.append("command signing key")

    if services.audit.ensure_checkpoint_key():
        report.created.append("audit checkpoint signing key")
    else:
        report.existing.append("audit checkpoint signing key")

    if services.users.count() == 0:
        if not admin_name or admin_password is None:
            from tundra.core.errors import InvalidInput

            raise InvalidInput("the first administrator needs a name and a password")
        services.users.add(SYSTEM, name=admin_name, password=admin_password, is_admin=True)
        report.created.append(f"administrator {admin_name}")
        report.admin_name = admin_name
    else:
        report.existing.append("users")

    if report.created:
        with unit_of_work(services.db, SYSTEM) as uow:
            uow.record(Action.SYSTEM_INIT, f"home:{settings.home}", {"created": report.created})
    return report


def needs_first_admin(services: Services) -> bool:
    """True when ``initialize`` will need the first administrator's name and password."""
    settings = services.settings
    if not settings.database_url and not settings.sqlite_path.exists():
        return True
    if services.db.schema_version() == 0:
        return True
    return services.users.count() == 0


def require_initialized(services: Services) -> None:
    """Refuse to run a service on a home that ``tundra init`` has not finished."""
    from tundra.core.errors import NotInitialized

    if not is_initialized(services) or services.users.count() == 0:
        raise NotInitialized(
            f"{services.settings.home} is not initialised", hint="run `tundra init`"
        )
