"""Password hashing: Argon2id with pinned parameters, a cap on concurrent hashes, a dummy hash.

The production parameters are part of the security specification (64 MiB, t=3, p=1, 32-byte
hash, 16-byte salt) and are pinned here rather than taken from the library's defaults, which
change between releases. Each production hash holds 64 MiB for its duration, so a bounded
semaphore caps how many run at once: a burst of logins queues instead of exhausting memory.
The ``test`` profile exists only so test suites do not pay 64 MiB per user they create.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from tundra.core.errors import ConfigError


@dataclass(frozen=True)
class Argon2Parameters:
    memory_cost: int  # KiB
    time_cost: int
    parallelism: int
    hash_len: int
    salt_len: int


PRODUCTION = Argon2Parameters(
    memory_cost=65536, time_cost=3, parallelism=1, hash_len=32, salt_len=16
)
# Cheap but still Argon2id with the production hash and salt sizes: tests exercise the real path.
TEST = Argon2Parameters(memory_cost=256, time_cost=1, parallelism=1, hash_len=32, salt_len=16)

PROFILES: dict[str, Argon2Parameters] = {"production": PRODUCTION, "test": TEST}

# Any fixed string works: only the cost of verifying against it matters, never its result.
_DUMMY_PASSWORD = "tundra/dummy-password/v1"  # noqa: S105 - not a credential


class PasswordHasher:
    """Hash and verify passwords; at most ``concurrency`` hashes are computed at once."""

    def __init__(self, parameters: Argon2Parameters, *, concurrency: int) -> None:
        if concurrency < 1:
            raise ConfigError("hash_concurrency must be at least 1")
        self.parameters = parameters
        self.concurrency = concurrency
        self._impl = argon2.PasswordHasher(
            time_cost=parameters.time_cost,
            memory_cost=parameters.memory_cost,
            parallelism=parameters.parallelism,
            hash_len=parameters.hash_len,
            salt_len=parameters.salt_len,
            type=argon2.Type.ID,
        )
        self._slots = threading.BoundedSemaphore(concurrency)
        self._dummy_lock = threading.Lock()
        self._dummy: str | None = None

    @classmethod
    def for_profile(cls, profile: str, *, concurrency: int) -> PasswordHasher:
        try:
            parameters = PROFILES[profile]
        except KeyError:
            raise ConfigError(
                f"unknown password profile {profile!r}", hint="use 'production' or 'test'"
            ) from None
        return cls(parameters, concurrency=concurrency)

    def hash(self, password: str) -> str:
        with self._slots:
            return self._impl.hash(password)

    def verify(self, hash: str, password: str) -> bool:
        """True when ``password`` matches ``hash``; False for a mismatch or an unusable hash."""
        with self._slots:
            try:
                return self._impl.verify(hash, password)
            except (VerificationError, InvalidHashError):
                return False

    def needs_rehash(self, hash: str) -> bool:
        """True when ``hash`` was made with other parameters (or another Argon2 variant)."""
        try:
            return self._impl.check_needs_rehash(hash)
        except (InvalidHashError, ValueError):
            return True

    def verify_dummy(self, password: str) -> None:
        """Spend the cost of one verification, for a user that does not exist.

        Without it an unknown name answers measurably faster than a known one with a wrong
        password, which tells an attacker which names exist.
        """
        self.verify(self._dummy_hash(), password)

    def _dummy_hash(self) -> str:
        with self._dummy_lock:
            if self._dummy is None:
                self._dummy = self.hash(_DUMMY_PASSWORD)
            return self._dummy
