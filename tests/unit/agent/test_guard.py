"""The agent's command guard: verification plus a nonce cache that survives restarts."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tundra.agent.guard import NONCE_FILE, CommandGuard
from tundra.agent.v1 import agent_pb2
from tundra.core.agents.envelope import (
    CLOCK_SKEW_MS,
    SIGNING_CONTEXT,
    build_envelope,
    key_id_for,
)
from tundra.core.errors import CommandRefused
from tundra.core.storage.kv_sqlite import SqliteKV

AGENT = "a" * 32


class Signer:
    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        raw = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = key_id_for(raw)
        self.public = {self.key_id: raw}

    def command(
        self,
        *,
        agent_id: str = AGENT,
        type_: str = "ping",
        payload: Any = None,
        ttl: int = 30,
        now_ms: int | None = None,
    ) -> agent_pb2.SignedCommand:
        _, envelope = build_envelope(
            agent_id=agent_id, type=type_, payload=payload or {}, ttl_seconds=ttl, now_ms=now_ms
        )
        return agent_pb2.SignedCommand(
            envelope=envelope,
            signature=self.key.sign(SIGNING_CONTEXT + envelope),
            key_id=self.key_id,
        )


@pytest.fixture
def signer() -> Signer:
    return Signer()


def _guard(state: Path, signer: Signer, agent_id: str = AGENT) -> CommandGuard:
    return CommandGuard(agent_id=agent_id, state_dir=state, public_keys=signer.public)


def _reason(guard: CommandGuard, signed: Any, **options: Any) -> str:
    with pytest.raises(CommandRefused) as caught:
        guard.check(signed, **options)
    return caught.value.reason


def test_a_valid_command_passes_once(tmp_path: Path, signer: Signer) -> None:
    signed = signer.command(type_="service.status", payload={"unit": "nginx"})
    with _guard(tmp_path, signer) as guard:
        command = guard.check(signed)
        assert command.type == "service.status"
        assert command.payload == {"unit": "nginx.service"}
        assert _reason(guard, signed) == "replay"
        # A byte-identical copy in a new message object is the same replay.
        assert _reason(guard, agent_pb2.SignedCommand.FromString(signed.SerializeToString())) == (
            "replay"
        )


def test_a_replay_is_refused_after_the_agent_restarts(tmp_path: Path, signer: Signer) -> None:
    state = tmp_path / "state"
    signed = signer.command()
    guard = _guard(state, signer)
    guard.check(signed)
    guard.close()

    restarted = _guard(state, signer)  # a new process: only the state directory is shared
    try:
        assert _reason(restarted, signed) == "replay"
        assert restarted.check(signer.command()).type == "ping"  # fresh commands still pass
    finally:
        restarted.close()
    # The refusal comes from the persisted cache, not from the command itself.
    with _guard(tmp_path / "elsewhere", signer) as other:
        assert other.check(signed).command_id


def test_the_nonce_is_kept_until_expiry_plus_skew(tmp_path: Path, signer: Signer) -> None:
    now = int(time.time() * 1000)
    signed = signer.command(ttl=20, now_ms=now)
    with _guard(tmp_path, signer) as guard:
        command = guard.check(signed, now_ms=now)
    store = SqliteKV(tmp_path / NONCE_FILE)
    try:
        left = store.ttl(f"nonce:{command.nonce}")
        assert left is not None
        expected = (command.expires_at_ms + CLOCK_SKEW_MS - now) / 1000
        assert expected - 5 < left <= expected
        assert store.get(f"nonce:{command.nonce}") == command.command_id.encode()
    finally:
        store.close()


def test_a_refused_command_does_not_burn_its_nonce(tmp_path: Path, signer: Signer) -> None:
    now = int(time.time() * 1000)
    signed = signer.command(now_ms=now)
    with _guard(tmp_path, signer) as guard:
        assert _reason(guard, signed, now_ms=now - CLOCK_SKEW_MS - 1) == "not-yet-valid"
        assert guard.check(signed, now_ms=now).command_id


def test_every_check_is_made(tmp_path: Path, signer: Signer) -> None:
    now = int(time.time() * 1000)
    stranger = Signer()
    with _guard(tmp_path, signer) as guard:
        assert _reason(guard, stranger.command()) == "key"
        forged = signer.command()
        forged.signature = stranger.key.sign(SIGNING_CONTEXT + forged.envelope)
        assert _reason(guard, forged) == "signature"
        tampered = signer.command()
        tampered.envelope = tampered.envelope.replace(b'"ping"', b'"facts"')
        assert _reason(guard, tampered) == "signature"
        assert _reason(guard, signer.command(agent_id="b" * 32)) == "audience"
        assert _reason(guard, signer.command(now_ms=now - 31_000)) == "expired"
        assert _reason(guard, signer.command(), now_ms=now + 31_000) == "expired"
        assert _reason(guard, agent_pb2.SignedCommand()) == "malformed"
        assert _reason(guard, object()) == "malformed"


def test_update_keys_switches_the_trusted_keys(tmp_path: Path, signer: Signer) -> None:
    rotated = Signer()
    with _guard(tmp_path, signer) as guard:
        assert _reason(guard, rotated.command()) == "key"
        guard.update_keys({**signer.public, **rotated.public})
        assert guard.check(rotated.command()).type == "ping"
        assert guard.check(signer.command()).type == "ping"
        guard.update_keys(rotated.public)
        assert _reason(guard, signer.command()) == "key"


def test_concurrent_checks_of_one_command_let_exactly_one_through(
    tmp_path: Path, signer: Signer
) -> None:
    signed = signer.command()
    results: list[str] = []
    barrier = threading.Barrier(4)
    with _guard(tmp_path, signer) as guard:

        def attempt() -> None:
            barrier.wait()
            try:
                guard.check(signed)
                results.append("ok")
            except CommandRefused as exc:
                results.append(exc.reason)

        threads = [threading.Thread(target=attempt) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert sorted(results) == ["ok", "replay", "replay", "replay"]


def test_the_state_directory_is_made_private(tmp_path: Path, signer: Signer) -> None:
    state = tmp_path / "new" / "state"
    with _guard(state, signer):
        pass
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert (state / NONCE_FILE).exists()


def test_a_closed_guard_refuses_to_work(tmp_path: Path, signer: Signer) -> None:
    guard = _guard(tmp_path, signer)
    guard.close()
    guard.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        guard.check(signer.command())


def test_nonces_that_expired_while_the_agent_was_down_are_swept(
    tmp_path: Path, signer: Signer
) -> None:
    store = SqliteKV(tmp_path / NONCE_FILE)
    store.set("nonce:" + "1" * 32, b"old", ttl=0.01)
    store.close()
    time.sleep(0.05)
    with _guard(tmp_path, signer):
        pass
    import sqlite3

    conn = sqlite3.connect(tmp_path / NONCE_FILE)
    try:
        assert conn.execute("SELECT count(*) FROM kv").fetchone()[0] == 0
    finally:
        conn.close()
