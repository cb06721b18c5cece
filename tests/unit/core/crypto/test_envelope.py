"""The envelope: exact layout, the golden ciphertext, tampering, moving, and round trips."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tundra.core.crypto import envelope
from tundra.core.crypto.envelope import ColumnCipher, EnvelopeError
from tundra.core.errors import DecryptionFailed
from tundra.core.principal import SYSTEM
from tundra.core.services import Services
from tundra.core.uow import unit_of_work

GOLDEN = Path(__file__).parents[3] / "fixtures" / "golden_envelope.json"
TABLE, COLUMN = "users", "totp_secret"


def _lp(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">I", len(data)) + data


def _spec_decrypt(data_key: bytes, table: str, column: str, row_id: str, blob: bytes) -> bytes:
    """The envelope decrypted straight from SECURITY-SPEC.md, without Tundra's code."""
    key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"tundra/v1/" + f"{table}.{column}".encode(),
    ).derive(data_key)
    header, nonce, body = blob[:8], blob[8:20], blob[20:]
    assert header[:4] == b"tnd\x01"
    return AESGCM(key).decrypt(nonce, body, header + _lp(table) + _lp(column) + _lp(row_id))


def test_layout_matches_the_spec() -> None:
    data_key = os.urandom(32)
    blob = ColumnCipher(data_key, 7, TABLE, COLUMN).seal("row-1", b"hello")
    assert blob[:3] == b"tnd"
    assert blob[3] == 1
    assert struct.unpack(">I", blob[4:8])[0] == 7
    assert len(blob) == 8 + 12 + len(b"hello") + 16
    assert _spec_decrypt(data_key, TABLE, COLUMN, "row-1", blob) == b"hello"
    assert envelope.envelope_term(blob) == 7
    assert envelope.MIN_LEN == 36  # KeyService.decrypt inlines this number


def test_nonces_are_fresh() -> None:
    cipher = ColumnCipher(os.urandom(32), 1, TABLE, COLUMN)
    blobs = {cipher.seal("r", b"same")[8:20] for _ in range(200)}
    assert len(blobs) == 200


def _install_golden(services: Services, fixture: dict[str, str]) -> None:
    path = services.settings.master_key_path
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    os.write(fd, bytes.fromhex(fixture["master_key_file_hex"]))
    os.close(fd)
    with unit_of_work(services.db, SYSTEM) as uow:
        uow.execute(
            "INSERT INTO keyring (term, wrapped, created_at) VALUES (:t, :w, 'golden')",
            {"t": int(fixture["term"]), "w": bytes.fromhex(fixture["wrapped_hex"])},
        )
        for key, value in (
            ("kcv", fixture["kcv"]),
            ("active_term", str(fixture["term"])),
            ("min_decrypt_term", str(fixture["term"])),
        ):
            uow.execute("INSERT INTO meta (key, value) VALUES (:k, :v)", {"k": key, "v": value})
        uow.record("test:golden:install", "keyring", {})


def test_golden_envelope_decrypts_through_the_real_code_path(bare_services: Services) -> None:
    fixture = json.loads(GOLDEN.read_text())
    _install_golden(bare_services, fixture)
    keys = bare_services.keys
    blob = bytes.fromhex(fixture["envelope_hex"])
    plaintext = bytes.fromhex(fixture["plaintext_hex"])
    assert keys.decrypt(fixture["table"], fixture["column"], fixture["row_id"], blob) == plaintext
    assert keys.data_key(int(fixture["term"])) == bytes.fromhex(fixture["data_key_hex"])
    assert (
        _spec_decrypt(
            bytes.fromhex(fixture["data_key_hex"]),
            fixture["table"],
            fixture["column"],
            fixture["row_id"],
            blob,
        )
        == plaintext
    )
    assert keys.verify().ok


@pytest.fixture
def sealed(key_services: Services) -> tuple[Services, bytes]:
    return key_services, key_services.keys.encrypt(TABLE, COLUMN, "row-a", b"a secret value")


def test_round_trip_through_the_service(sealed: tuple[Services, bytes]) -> None:
    services, blob = sealed
    assert services.keys.decrypt(TABLE, COLUMN, "row-a", blob) == b"a secret value"
    assert services.keys.decrypt(TABLE, COLUMN, "row-a", memoryview(blob)) == b"a secret value"


def test_every_flipped_byte_fails(sealed: tuple[Services, bytes]) -> None:
    services, blob = sealed
    for position in range(len(blob)):
        for flip in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[position] ^= flip
            with pytest.raises(DecryptionFailed) as caught:
                services.keys.decrypt(TABLE, COLUMN, "row-a", bytes(tampered))
            assert "users.totp_secret of row row-a" in caught.value.message


def test_truncated_and_extended_values_fail(sealed: tuple[Services, bytes]) -> None:
    services, blob = sealed
    for cut in (0, 1, 3, 8, 20, 35, len(blob) - 1):
        with pytest.raises(DecryptionFailed):
            services.keys.decrypt(TABLE, COLUMN, "row-a", blob[:cut])
    with pytest.raises(DecryptionFailed):
        services.keys.decrypt(TABLE, COLUMN, "row-a", blob + b"\x00")


@pytest.mark.parametrize(
    ("table", "column", "row_id"),
    [
        ("users", "totp_secret", "row-b"),  # another row
        ("users", "totp_secret", "row-a "),  # a row id that differs by one character
        ("users", "password_hash", "row-a"),  # another column
        ("servers", "totp_secret", "row-a"),  # another table
    ],
)
def test_a_value_moved_elsewhere_fails(
    sealed: tuple[Services, bytes], table: str, column: str, row_id: str
) -> None:
    services, blob = sealed
    with pytest.raises(DecryptionFailed) as caught:
        services.keys.decrypt(table, column, row_id, blob)
    assert f"{table}.{column} of row {row_id}" in caught.value.message


def test_bad_magic_version_and_unknown_term(sealed: tuple[Services, bytes]) -> None:
    services, blob = sealed
    cases = {
        "bad magic": b"xnd" + blob[3:],
        "unsupported envelope version 2": blob[:3] + b"\x02" + blob[4:],
        "no term 9": blob[:4] + struct.pack(">I", 9) + blob[8:],
        "term 0 is retired": blob[:4] + struct.pack(">I", 0) + blob[8:],
    }
    for reason, bad in cases.items():
        with pytest.raises(DecryptionFailed) as caught:
            services.keys.decrypt(TABLE, COLUMN, "row-a", bad)
        assert reason in caught.value.message


def test_no_failure_returns_an_empty_value(sealed: tuple[Services, bytes]) -> None:
    services, blob = sealed
    for bad in (b"", blob[:8], b"tnd\x01" + b"\x00" * 40):
        with pytest.raises(DecryptionFailed):
            services.keys.decrypt(TABLE, COLUMN, "row-a", bad)


def test_wrapped_key_is_bound_to_its_term() -> None:
    wrap_key, data_key = os.urandom(32), os.urandom(32)
    wrapped = envelope.wrap_data_key(wrap_key, 3, data_key)
    assert len(wrapped) == envelope.WRAP_LEN
    assert envelope.unwrap_data_key(wrap_key, 3, wrapped) == data_key
    with pytest.raises(EnvelopeError):
        envelope.unwrap_data_key(wrap_key, 4, wrapped)
    with pytest.raises(EnvelopeError):
        envelope.unwrap_data_key(os.urandom(32), 3, wrapped)
    with pytest.raises(EnvelopeError):
        envelope.unwrap_data_key(wrap_key, 3, wrapped[:-1])


_ids = st.text(min_size=0, max_size=40)
_names = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FFF), min_size=1, max_size=20
)


@given(
    data=st.binary(max_size=2048),
    row_id=_ids,
    table=_names,
    column=_names,
    term=st.integers(min_value=1, max_value=2**32 - 1),
)
def test_envelope_round_trip_property(
    data: bytes, row_id: str, table: str, column: str, term: int
) -> None:
    key = b"\x11" * 32
    cipher = ColumnCipher(key, term, table, column)
    blob = cipher.seal(row_id, data)
    assert cipher.open(row_id, blob) == data
    assert _spec_decrypt(key, table, column, row_id, blob) == data
    with pytest.raises(EnvelopeError):
        cipher.open(row_id + "x", blob)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=512), row_id=_ids)
def test_service_round_trip_property(key_services: Services, data: bytes, row_id: str) -> None:
    blob = key_services.keys.encrypt(TABLE, COLUMN, row_id, data)
    assert key_services.keys.decrypt(TABLE, COLUMN, row_id, blob) == data
