"""Command envelopes: building, canonical form, and every refusal of verify_command, in order.

(Named test_command_envelope.py: tests/unit/core/crypto/test_envelope.py owns the basename.)
The nonce (replay) check needs state and lives in the agent's guard: tests/unit/agent/test_guard.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tundra.core.agents import envelope as env
from tundra.core.agents.envelope import (
    CLOCK_SKEW_MS,
    COMMAND_TYPES,
    MAX_TTL_MS,
    SIGNING_CONTEXT,
    Command,
    build_envelope,
    canonical_json,
    key_id_for,
    validate_payload,
    verify_command,
)
from tundra.core.errors import CommandRefused, InvalidInput

AGENT = "a" * 32
OTHER_AGENT = "b" * 32
NOW = 1_800_000_000_000
KEY = Ed25519PrivateKey.generate()
RAW_PUBLIC = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
KEY_ID = key_id_for(RAW_PUBLIC)
KEYS = {KEY_ID: RAW_PUBLIC}


def sign(envelope: bytes, key: Ed25519PrivateKey = KEY) -> bytes:
    return key.sign(SIGNING_CONTEXT + envelope)


def fields(**changes: Any) -> dict[str, Any]:
    """A valid envelope object (ping for AGENT, issued at NOW, 30 s), with ``changes``."""
    obj: dict[str, Any] = {
        "agent_id": AGENT,
        "command_id": "c" * 32,
        "expires_at_ms": NOW + 30_000,
        "issued_at_ms": NOW,
        "nonce": "0" * 32,
        "payload": {},
        "type": "ping",
        "v": 1,
    }
    obj.update(changes)
    return obj


def verify(envelope: bytes, signature: bytes | None = None, **options: Any) -> Command:
    return verify_command(
        envelope,
        sign(envelope) if signature is None else signature,
        options.pop("key_id", KEY_ID),
        public_keys=options.pop("public_keys", KEYS),
        agent_id=options.pop("agent_id", AGENT),
        now_ms=options.pop("now_ms", NOW),
    )


def refused(envelope: bytes, signature: bytes | None = None, **options: Any) -> str:
    with pytest.raises(CommandRefused) as caught:
        verify(envelope, signature, **options)
    assert str(caught.value)  # a message an operator can read
    return caught.value.reason


# -- building -----------------------------------------------------------------------------------


def test_build_and_verify_round_trip() -> None:
    command, envelope = build_envelope(
        agent_id=AGENT, type="service.status", payload={"unit": "nginx"}, ttl_seconds=30, now_ms=NOW
    )
    assert command.payload == {"unit": "nginx.service"}
    assert (command.issued_at_ms, command.expires_at_ms, command.ttl_ms) == (
        NOW,
        NOW + 30_000,
        30_000,
    )
    assert re.fullmatch(r"[0-9a-f]{32}", command.nonce)
    assert envelope == canonical_json(command.envelope_object())
    assert json.loads(envelope) == command.envelope_object()
    assert b" " not in envelope
    assert list(json.loads(envelope)) == sorted(json.loads(envelope))
    assert verify(envelope) == command


def test_the_envelope_is_exactly_the_documented_canonical_json() -> None:
    command, envelope = build_envelope(
        agent_id=AGENT, type="ping", payload={}, ttl_seconds=5, now_ms=NOW
    )
    expected = (
        f'{{"agent_id":"{AGENT}","command_id":"{command.command_id}",'
        f'"expires_at_ms":{NOW + 5000},"issued_at_ms":{NOW},"nonce":"{command.nonce}",'
        '"payload":{},"type":"ping","v":1}'
    ).encode()
    assert envelope == expected


def test_nonces_and_ids_are_fresh_each_time() -> None:
    built = [
        build_envelope(agent_id=AGENT, type="ping", payload={}, ttl_seconds=30)[0]
        for _ in range(50)
    ]
    assert len({c.nonce for c in built}) == 50
    assert len({c.command_id for c in built}) == 50


def test_build_uses_the_clock_when_no_time_is_given() -> None:
    import time

    before = int(time.time() * 1000)
    command, _ = build_envelope(agent_id=AGENT, type="ping", payload={}, ttl_seconds=60)
    assert before <= command.issued_at_ms <= int(time.time() * 1000)
    assert command.ttl_ms == MAX_TTL_MS


@pytest.mark.parametrize("ttl", [0, -1, 61, 3600, True, 1.5, "30"])
def test_build_refuses_a_lifetime_outside_one_to_sixty_seconds(ttl: Any) -> None:
    with pytest.raises(InvalidInput, match="lifetime"):
        build_envelope(agent_id=AGENT, type="ping", payload={}, ttl_seconds=ttl)


@pytest.mark.parametrize("agent_id", ["", "a b", "../x", "a" * 65, None])
def test_build_refuses_a_bad_agent_id(agent_id: Any) -> None:
    with pytest.raises(InvalidInput, match="agent id"):
        build_envelope(agent_id=agent_id, type="ping", payload={}, ttl_seconds=30)


def test_build_refuses_unknown_types_and_bad_payloads() -> None:
    with pytest.raises(InvalidInput, match="unknown command type 'shell'"):
        build_envelope(agent_id=AGENT, type="shell", payload={"cmd": "id"}, ttl_seconds=30)
    with pytest.raises(InvalidInput, match="unit"):
        build_envelope(
            agent_id=AGENT, type="service.status", payload={"unit": "-x"}, ttl_seconds=30
        )


# -- payload validation ------------------------------------------------------------------------


def test_the_allowlist() -> None:
    assert frozenset({"ping", "facts", "service.status"}) == COMMAND_TYPES


@pytest.mark.parametrize(
    ("unit", "normalized"),
    [
        ("nginx", "nginx.service"),
        ("nginx.service", "nginx.service"),
        ("php8.2-fpm", "php8.2-fpm.service"),
        ("getty@tty1.service", "getty@tty1.service"),
        ("systemd-journald.socket", "systemd-journald.socket"),
        ("dev-sda1.device", "dev-sda1.device"),
        ("sys-kernel-debug.mount", "sys-kernel-debug.mount"),
        ("apt-daily.timer", "apt-daily.timer"),
        ("user@1000.service", "user@1000.service"),
        ("multi-user.target", "multi-user.target"),
        ("a:b_c", "a:b_c.service"),
        ("x" * 128, "x" * 128 + ".service"),
    ],
)
def test_unit_names_are_accepted_and_normalised(unit: str, normalized: str) -> None:
    assert validate_payload("service.status", {"unit": unit}) == {"unit": normalized}


@pytest.mark.parametrize(
    "unit",
    [
        "",
        "-x",
        "--help",
        "-.mount",
        "../etc/passwd",
        "/etc/passwd",
        "a/b.service",
        "a\\b",
        "nginx;reboot",
        "nginx service",
        "nginx\n",
        "nginx\x00",
        "$(reboot)",
        "`id`",
        "ünit",
        "x" * 129,
        ".service",
        ".timer",
        "*",
        None,
        5,
        ["nginx"],
    ],
)
def test_bad_unit_names_are_refused(unit: Any) -> None:
    with pytest.raises(InvalidInput, match="unit name"):
        validate_payload("service.status", {"unit": unit})


@pytest.mark.parametrize(
    ("type_", "payload", "match"),
    [
        ("ping", {"x": 1}, "takes no payload"),
        ("facts", {"unit": "nginx"}, "takes no payload"),
        ("service.status", {}, "needs a unit"),
        ("service.status", {"unit": "nginx", "extra": 1}, "unexpected payload field"),
        ("service.status", ["nginx"], "must be an object"),
        ("exec", {}, "unknown command type"),
        ("", {}, "unknown command type"),
        (None, {}, "unknown command type"),
    ],
)
def test_bad_payloads_are_refused(type_: Any, payload: Any, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        validate_payload(type_, payload)


# -- verification: each reason ------------------------------------------------------------------


def test_a_valid_command_verifies() -> None:
    command = verify(canonical_json(fields()))
    assert command == Command(AGENT, "c" * 32, "0" * 32, NOW, NOW + 30_000, "ping", {})


@pytest.mark.parametrize(
    ("envelope", "signature"),
    [
        ("text", b"s" * 64),
        (canonical_json(fields()), "sig"),
        (None, b"s" * 64),
        (b"", b"s" * 64),
        (b"{" * (env.MAX_ENVELOPE_BYTES + 1), b"s" * 64),
    ],
    ids=["str-envelope", "str-signature", "none", "empty", "huge"],
)
def test_malformed_input_is_refused_before_anything_else(envelope: Any, signature: Any) -> None:
    assert refused(envelope, signature, key_id="unknown") == "malformed"


def test_an_unknown_key_id_is_refused() -> None:
    envelope = canonical_json(fields())
    assert refused(envelope, key_id="0123456789abcdef") == "key"
    assert refused(envelope, key_id=KEY_ID.upper()) == "key"
    assert refused(envelope, public_keys={}) == "key"
    assert refused(envelope, key_id=None) == "key"
    assert refused(envelope, key_id=KEY_ID.encode()) == "key"


def test_a_broken_public_key_is_refused_as_a_key_problem() -> None:
    envelope = canonical_json(fields())
    assert refused(envelope, public_keys={KEY_ID: b"short"}) == "key"
    assert refused(envelope, public_keys={KEY_ID: "not bytes"}) == "key"


def test_a_signature_by_another_key_is_refused() -> None:
    envelope = canonical_json(fields())
    assert refused(envelope, sign(envelope, Ed25519PrivateKey.generate())) == "signature"


def test_a_signature_without_the_context_prefix_is_refused() -> None:
    envelope = canonical_json(fields())
    assert refused(envelope, KEY.sign(envelope)) == "signature"


@pytest.mark.parametrize("signature", [b"", b"x" * 63, b"x" * 65, b"\x00" * 64])
def test_bad_signature_bytes_are_refused(signature: bytes) -> None:
    assert refused(canonical_json(fields()), signature) == "signature"


def test_every_tampered_byte_of_the_envelope_is_refused() -> None:
    envelope = canonical_json(fields(type="service.status", payload={"unit": "nginx.service"}))
    signature = sign(envelope)
    for i in range(len(envelope)):
        tampered = bytearray(envelope)
        tampered[i] ^= 0x01
        assert refused(bytes(tampered), signature) == "signature", i
    assert refused(envelope + b" ", signature) == "signature"
    assert refused(envelope[:-1], signature) == "signature"


def test_a_tampered_signature_is_refused() -> None:
    envelope = canonical_json(fields())
    signature = bytearray(sign(envelope))
    signature[10] ^= 0x80
    assert refused(envelope, bytes(signature)) == "signature"


@pytest.mark.parametrize(
    "envelope",
    [
        b"not json",
        b"[]",
        b'"ping"',
        b"null",
        canonical_json(fields())[:-1],
        json.dumps(fields()).encode(),  # spaces: not canonical
        json.dumps(fields(), sort_keys=True).encode(),
        canonical_json(fields())[:-1] + b',"v":1}',  # duplicate key
        canonical_json({k: v for k, v in fields().items() if k != "nonce"}),
        canonical_json({**fields(), "shell": "id"}),
        canonical_json(fields(v=2)),
        canonical_json(fields(v=True)),
        canonical_json(fields(v="1")),
        canonical_json(fields(issued_at_ms=str(NOW))),
        canonical_json(fields(expires_at_ms=float(NOW + 1000))),
        canonical_json(fields(issued_at_ms=True)),
        canonical_json(fields(agent_id=None)),
        canonical_json(fields(type=["ping"])),
        canonical_json(fields(payload=[])),
        canonical_json(fields(nonce="0" * 31)),
        canonical_json(fields(nonce="A" * 32)),
        canonical_json(fields(nonce="0" * 32 + "\n")),
        canonical_json(fields(command_id="")),
        canonical_json(fields(command_id="../x")),
        canonical_json(fields()).replace(b'"ping"', b'"p\\u0069ng"'),  # escape: not canonical
        canonical_json(fields()).replace(b"ping", "pïng".encode()),  # not ASCII
        canonical_json(fields()).replace(b'"payload":{}', b'"payload":{"x":NaN}'),
        b'{"a":' * 1000 + b"1" + b"}" * 1000,
    ],
)
def test_signed_but_malformed_envelopes_are_refused(envelope: bytes) -> None:
    assert refused(envelope) == "malformed"


@pytest.mark.parametrize("type_", ["shell", "exec", "", "PING", "service.restart"])
def test_a_type_outside_the_allowlist_is_refused(type_: str) -> None:
    assert refused(canonical_json(fields(type=type_))) == "type"


@pytest.mark.parametrize(
    ("type_", "payload"),
    [
        ("ping", {"x": 1}),
        ("facts", {"cmd": "rm -rf /"}),
        ("service.status", {}),
        ("service.status", {"unit": "-rf"}),
        ("service.status", {"unit": "../../bin/sh"}),
        ("service.status", {"unit": 1}),
        ("service.status", {"unit": "nginx", "args": ["--now"]}),
    ],
)
def test_a_bad_payload_is_refused(type_: str, payload: dict[str, Any]) -> None:
    assert refused(canonical_json(fields(type=type_, payload=payload))) == "payload"


def test_the_payload_comes_back_normalised() -> None:
    command = verify(canonical_json(fields(type="service.status", payload={"unit": "cron"})))
    assert command.payload == {"unit": "cron.service"}


def test_a_command_for_another_agent_is_refused() -> None:
    envelope = canonical_json(fields())
    assert refused(envelope, agent_id=OTHER_AGENT) == "audience"
    assert refused(envelope, agent_id="") == "audience"
    assert refused(envelope, agent_id=AGENT.upper()) == "audience"


def test_freshness_boundaries() -> None:
    envelope = canonical_json(fields())
    # Up to CLOCK_SKEW_MS early is tolerated (the agent's clock may be behind).
    assert verify(envelope, now_ms=NOW - CLOCK_SKEW_MS).command_id == "c" * 32
    assert refused(envelope, now_ms=NOW - CLOCK_SKEW_MS - 1) == "not-yet-valid"
    assert verify(envelope, now_ms=NOW + 29_999).command_id == "c" * 32
    assert refused(envelope, now_ms=NOW + 30_000) == "expired"
    assert refused(envelope, now_ms=NOW + 10**9) == "expired"


@pytest.mark.parametrize(
    "expires_at_ms",
    [NOW + MAX_TTL_MS + 1, NOW + 3_600_000, NOW, NOW - 1],
    ids=["61s", "1h", "zero", "negative"],
)
def test_a_lifetime_over_sixty_seconds_or_not_positive_is_refused(expires_at_ms: int) -> None:
    envelope = canonical_json(fields(expires_at_ms=expires_at_ms))
    assert refused(envelope, now_ms=NOW - 1000) == "ttl"


def test_a_sixty_second_lifetime_is_accepted() -> None:
    assert verify(canonical_json(fields(expires_at_ms=NOW + MAX_TTL_MS))).ttl_ms == MAX_TTL_MS


@pytest.mark.parametrize(
    ("changes", "options", "reason"),
    [
        # Nothing is parsed before the signature is good: an unsigned "shell" is a signature fault.
        ({"type": "shell"}, {"signature": b"x" * 64}, "signature"),
        ({"type": "shell"}, {"key_id": "nope", "signature": b"x" * 64}, "key"),
        ({"type": "shell", "agent_id": OTHER_AGENT}, {}, "type"),
        ({"payload": {"x": 1}, "agent_id": OTHER_AGENT}, {}, "payload"),
        ({"agent_id": OTHER_AGENT}, {"now_ms": NOW + 10**9}, "audience"),
        ({"expires_at_ms": NOW + 10**6}, {"now_ms": NOW + 10**7}, "expired"),
        ({"v": 2, "type": "shell"}, {}, "malformed"),
    ],
)
def test_checks_run_in_the_documented_order(
    changes: dict[str, Any], options: dict[str, Any], reason: str
) -> None:
    envelope = canonical_json(fields(**changes))
    signature = options.pop("signature", None)
    assert refused(envelope, signature, **options) == reason


# -- fuzzing: nothing but CommandRefused, ever --------------------------------------------------

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    envelope=st.binary(max_size=600),
    signature=st.binary(max_size=80),
    key_id=st.one_of(
        st.text(max_size=20), st.binary(max_size=20), st.just(KEY_ID), st.none(), st.integers()
    ),
)
def test_arbitrary_bytes_only_ever_give_a_refusal(
    envelope: bytes, signature: bytes, key_id: Any
) -> None:
    with pytest.raises(CommandRefused):
        verify_command(envelope, signature, key_id, public_keys=KEYS, agent_id=AGENT, now_ms=NOW)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(envelope=st.binary(max_size=600))
def test_arbitrary_signed_bytes_only_ever_give_a_refusal(envelope: bytes) -> None:
    with pytest.raises(CommandRefused):
        verify(envelope)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(sorted(fields())), value=_JSON)
def test_any_value_in_any_signed_field_gives_a_command_or_a_refusal(field: str, value: Any) -> None:
    envelope = canonical_json(fields(**{field: value}))
    outcome: Command | CommandRefused
    try:
        outcome = verify(envelope)
    except CommandRefused as exc:
        outcome = exc
    if isinstance(outcome, CommandRefused):
        assert outcome.reason in {
            "malformed",
            "type",
            "payload",
            "audience",
            "expired",
            "not-yet-valid",
            "ttl",
        }
    else:
        assert outcome.agent_id == AGENT
        assert outcome.type in COMMAND_TYPES
        assert NOW < outcome.expires_at_ms <= outcome.issued_at_ms + MAX_TTL_MS
