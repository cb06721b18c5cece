"""The agent's gate for signed commands: verification, then a nonce seen at most once, ever.

:func:`tundra.core.agents.envelope.verify_command` checks the key, signature, shape, type,
audience and freshness; the guard adds the one check that needs state: the nonce. Nonces live in
an embedded KV file in the agent's state directory, so a command captured on the wire and
replayed after the agent restarts is refused as surely as one replayed a second later. Each nonce
is kept until its command's expiry plus the allowed clock skew; after that the command is refused
as expired anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from tundra.core.agents.envelope import CLOCK_SKEW_MS, Command, verify_command
from tundra.core.clock import epoch
from tundra.core.errors import CommandRefused
from tundra.core.storage.kv import KV, open_kv
from tundra.core.storage.kv_sqlite import SqliteKV

if TYPE_CHECKING:
    from tundra.agent.v1 import agent_pb2

NONCE_FILE = "nonces.db"


class CommandGuard:
    def __init__(self, *, agent_id: str, state_dir: Path, public_keys: Mapping[str, bytes]) -> None:
        from tundra.core.crypto.primitives import make_private_dir

        self.agent_id = agent_id
        if not state_dir.exists():
            make_private_dir(state_dir)
        kv = open_kv("", sqlite_path=state_dir / NONCE_FILE)
        # Open the file now, so an unusable state directory fails at start-up and not on the
        # first command, and drop the nonces that expired while the agent was down.
        if isinstance(kv, SqliteKV):
            kv.sweep()
        self._kv: KV | None = kv
        self._lock = threading.Lock()
        self._keys: dict[str, bytes] = {}
        self.update_keys(public_keys)

    def update_keys(self, public_keys: Mapping[str, bytes]) -> None:
        """Replace the trusted command keys (from a Welcome, after a key rotation)."""
        keys = {str(k): bytes(v) for k, v in public_keys.items()}
        with self._lock:
            self._keys = keys

    def check(self, signed: agent_pb2.SignedCommand, *, now_ms: int | None = None) -> Command:
        """The verified command, or CommandRefused(reason) — then it must not be executed."""
        kv = self._kv
        if kv is None:
            raise RuntimeError("the command guard is closed")
        now = int(epoch() * 1000) if now_ms is None else now_ms
        try:
            envelope, signature, key_id = signed.envelope, signed.signature, signed.key_id
        except AttributeError:
            raise CommandRefused("not a signed command", reason="malformed") from None
        with self._lock:
            keys = self._keys
        command = verify_command(
            envelope, signature, key_id, public_keys=keys, agent_id=self.agent_id, now_ms=now
        )
        # verify_command guarantees now < expires_at, so the TTL is at least the skew.
        ttl = (command.expires_at_ms + CLOCK_SKEW_MS - now) / 1000
        if not kv.set_if_absent(f"nonce:{command.nonce}", command.command_id.encode(), ttl=ttl):
            raise CommandRefused(
                f"command {command.command_id} was replayed (its nonce was seen before)",
                reason="replay",
            )
        return command

    def close(self) -> None:
        if self._kv is not None:
            self._kv.close()
            self._kv = None

    def __enter__(self) -> CommandGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
