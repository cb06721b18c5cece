"""The one service container. Front ends get a :class:`Services` and call into it.

Everything is built lazily: a CLI command that lists servers opens the database and nothing
else, so it never pays for Argon2, the master key, psycopg or redis it does not use.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from tundra.core.settings import Settings, load_settings
from tundra.core.storage.db import Database, open_database
from tundra.core.storage.kv import KV, open_kv

if TYPE_CHECKING:
    from tundra.core.acceptance.service import AcceptanceService
    from tundra.core.agents.commands import CommandService
    from tundra.core.agents.enrollment import EnrollmentService
    from tundra.core.agents.registry import AgentRegistry
    from tundra.core.agents.signing import CommandSigner
    from tundra.core.audit.service import AuditService
    from tundra.core.crypto.keyring import KeyService
    from tundra.core.crypto.passwords import PasswordHasher
    from tundra.core.fleet.servers import ServerService
    from tundra.core.identity.csrf import CsrfService
    from tundra.core.identity.reauth import ReauthService
    from tundra.core.identity.sessions import SessionService
    from tundra.core.identity.tokens import TokenService
    from tundra.core.identity.totp import TotpService
    from tundra.core.identity.users import UserService
    from tundra.core.pki.service import PkiService


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def db(self) -> Database:
        return open_database(self.settings.database_url, sqlite_path=str(self.settings.sqlite_path))

    @cached_property
    def kv(self) -> KV:
        return open_kv(self.settings.valkey_url, sqlite_path=self.settings.kv_path)

    @cached_property
    def keys(self) -> KeyService:
        from tundra.core.crypto.keyring import KeyService

        return KeyService(self)

    @cached_property
    def passwords(self) -> PasswordHasher:
        from tundra.core.crypto.passwords import PasswordHasher

        return PasswordHasher.for_profile(
            self.settings.password_profile, concurrency=self.settings.hash_concurrency
        )

    @cached_property
    def users(self) -> UserService:
        from tundra.core.identity.users import UserService

        return UserService(self)

    @cached_property
    def totp(self) -> TotpService:
        from tundra.core.identity.totp import TotpService

        return TotpService(self)

    @cached_property
    def reauth(self) -> ReauthService:
        from tundra.core.identity.reauth import ReauthService

        return ReauthService(self)

    @cached_property
    def csrf(self) -> CsrfService:
        from tundra.core.identity.csrf import CsrfService

        return CsrfService(self)

    @cached_property
    def sessions(self) -> SessionService:
        from tundra.core.identity.sessions import SessionService

        return SessionService(self)

    @cached_property
    def tokens(self) -> TokenService:
        from tundra.core.identity.tokens import TokenService

        return TokenService(self)

    @cached_property
    def servers(self) -> ServerService:
        from tundra.core.fleet.servers import ServerService

        return ServerService(self)

    @cached_property
    def pki(self) -> PkiService:
        from tundra.core.pki.service import PkiService

        return PkiService(self)

    @cached_property
    def enrollment(self) -> EnrollmentService:
        from tundra.core.agents.enrollment import EnrollmentService

        return EnrollmentService(self)

    @cached_property
    def agents(self) -> AgentRegistry:
        from tundra.core.agents.registry import AgentRegistry

        return AgentRegistry(self)

    @cached_property
    def command_signer(self) -> CommandSigner:
        from tundra.core.agents.signing import CommandSigner

        return CommandSigner(self)

    @cached_property
    def commands(self) -> CommandService:
        from tundra.core.agents.commands import CommandService

        return CommandService(self)

    @cached_property
    def audit(self) -> AuditService:
        from tundra.core.audit.service import AuditService

        return AuditService(self)

    @cached_property
    def acceptance(self) -> AcceptanceService:
        from tundra.core.acceptance.service import AcceptanceService

        return AcceptanceService(self)

    def close(self) -> None:
        for name in ("keys", "db", "kv"):
            if name in self.__dict__:
                self.__dict__[name].close()


def build_services(settings: Settings | None = None) -> Services:
    return Services(settings or load_settings())
