"""The agent's configuration file and state directory: round trips, the renewal swap journal,
and the errors an operator sees for missing, corrupt or unsafe files."""

from __future__ import annotations

import os
import stat
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from tundra.agent.config import (
    AgentConfig,
    load_config,
    render_config,
    toml_string,
    write_config,
)
from tundra.agent.state import AgentState, agent_status, renewal_due
from tundra.core.errors import ConfigError, InvalidFile

AGENT_ID = "0123456789abcdef0123456789abcdef"


def make_config(state_dir: Path, **changes: str) -> AgentConfig:
    values = {
        "agent_id": AGENT_ID,
        "server_name": "web-1",
        "gateway": "panel.example.net:7447",
        "panel_url": "https://panel.example.net:8443",
    }
    values.update(changes)
    return AgentConfig(state_dir=state_dir, **values)


def make_pair(
    *, hours: float = 24.0, start: datetime | None = None
) -> tuple[bytes, bytes, bytes, ec.EllipticCurvePrivateKey]:
    """(key PEM, cert PEM, CA PEM, key): an agent certificate from a throwaway CA."""
    start = start or datetime.now(UTC) - timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "web-1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(hours=hours))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://tundra/agent/{AGENT_ID}")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem = serialization.Encoding.PEM
    return key_pem, cert.public_bytes(pem), ca.public_bytes(pem), key


def enrolled(tmp_path: Path, **pair_options: object) -> tuple[AgentState, bytes, bytes]:
    state = AgentState(tmp_path / "state")
    state.prepare()
    key_pem, cert_pem, ca_pem, _ = make_pair(**pair_options)  # type: ignore[arg-type]
    state.store_credentials(key_pem=key_pem, cert_pem=cert_pem)
    state.store_ca_bundle(ca_pem)
    state.store_command_keys({"00112233aabbccdd": bytes(range(32))})
    return state, key_pem, cert_pem


# -- the configuration file -----------------------------------------------------------------


def test_config_round_trip_with_awkward_strings(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "tundra" / "agent.toml"
    config = make_config(
        tmp_path / 'state dir "quoted" \\ back',
        server_name='we"b\\1\n\t\x00\x1f\x7f é ✓',
        panel_url="https://panel.example.net:8443/base",
    )
    write_config(config, path)
    assert load_config(path) == config
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["agent.toml"]  # no temporary left
    assert "\x00" not in path.read_text("utf-8")


@given(st.text())
def test_toml_string_round_trips_any_text(value: str) -> None:
    assert tomllib.loads(f"x = {toml_string(value)}")["x"] == value


def test_rendered_config_is_commented_and_has_no_secret(tmp_path: Path) -> None:
    text = render_config(make_config(tmp_path))
    assert text.startswith("# Tundra agent configuration")
    assert "key" not in tomllib.loads(text)


def test_rewriting_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    write_config(make_config(tmp_path / "s"), path)
    write_config(make_config(tmp_path / "s", server_name="web-2"), path)
    assert load_config(path).server_name == "web-2"


def test_missing_config_says_how_to_enroll(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "agent.toml")
    assert "no agent configuration" in str(caught.value)
    assert "tundra agent enroll" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("agent_id = ", "not valid TOML"),
        (b"\xff\xfe".decode("latin-1"), "not valid TOML"),
        ('agent_id = "x"', "lacks 'server_name'"),
        ('agent_id = 5\nserver_name = "a"', "not a non-empty string"),
        ("FULL;extra = 'x'", "unknown keys: extra"),
        ("FULL;agent_id = 'ABC'", "32 lowercase hex"),
        ("FULL;gateway = 'panel.example.net'", "bad gateway"),
        ("FULL;gateway = 'panel.example.net:0'", "bad gateway"),
        ("FULL;panel_url = 'http://panel:8080'", "not https://"),
        ("FULL;state_dir = 'relative/dir'", "not an absolute path"),
    ],
)
def test_bad_config_files_are_refused_with_the_problem(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "agent.toml"
    if text.startswith("FULL;"):
        values = tomllib.loads(render_config(make_config(tmp_path / "s")))
        override = tomllib.loads(text.removeprefix("FULL;"))
        values.update(override)
        text = "\n".join(f"{k} = {toml_string(str(v))}" for k, v in values.items())
    path.write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())
    with pytest.raises(InvalidFile) as caught:
        load_config(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


# -- the state directory --------------------------------------------------------------------


def test_credentials_round_trip_with_safe_modes(tmp_path: Path) -> None:
    state, key_pem, cert_pem = enrolled(tmp_path)
    creds = state.load_credentials()
    assert (creds.key_pem, creds.cert_pem) == (key_pem, cert_pem)
    assert stat.S_IMODE(state.dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(state.key_path.stat().st_mode) == 0o600
    assert state.load_command_keys() == {"00112233aabbccdd": bytes(range(32))}
    assert state.problems() == []
    assert sorted(p.name for p in state.dir.iterdir()) == [
        "agent.crt",
        "agent.key",
        "ca.pem",
        "command-keys.json",
    ]


def test_renewal_replaces_the_pair(tmp_path: Path) -> None:
    state, _, _ = enrolled(tmp_path)
    new_key, new_cert, _, _ = make_pair()
    state.store_credentials(key_pem=new_key, cert_pem=new_cert)
    creds = state.load_credentials()
    assert (creds.key_pem, creds.cert_pem) == (new_key, new_cert)
    assert not list(state.dir.glob("*.new"))


def test_interrupted_swap_after_the_key_rename_is_finished(tmp_path: Path) -> None:
    state, _, _ = enrolled(tmp_path)
    new_key, new_cert, _, _ = make_pair()
    # The crash came between the two renames: new key in place, certificate still staged.
    (state.dir / "agent.crt.new").write_bytes(new_cert)
    state.key_path.unlink()
    state.key_path.write_bytes(new_key)
    os.chmod(state.key_path, 0o600)
    assert "renewal was interrupted" in " ".join(state.problems())
    creds = state.load_credentials()
    assert (creds.key_pem, creds.cert_pem) == (new_key, new_cert)
    assert state.problems() == []


def test_interrupted_swap_with_both_stages_is_finished(tmp_path: Path) -> None:
    state, _, _ = enrolled(tmp_path)
    new_key, new_cert, _, _ = make_pair()
    (state.dir / "agent.crt.new").write_bytes(new_cert)
    (state.dir / "agent.key.new").write_bytes(new_key)
    os.chmod(state.dir / "agent.key.new", 0o600)
    assert state.recover() is True
    assert state.load_credentials().cert_pem == new_cert


@pytest.mark.parametrize("stage", ["agent.crt.new", "agent.key.new"])
def test_half_written_stage_is_dropped_and_the_old_pair_kept(tmp_path: Path, stage: str) -> None:
    state, key_pem, cert_pem = enrolled(tmp_path)
    new_key, new_cert, _, _ = make_pair()
    (state.dir / stage).write_bytes(new_cert if stage.endswith("crt.new") else new_key)
    assert state.recover() is False
    creds = state.load_credentials()
    assert (creds.key_pem, creds.cert_pem) == (key_pem, cert_pem)
    assert not (state.dir / stage).exists()


def test_missing_key_says_enroll(tmp_path: Path) -> None:
    state, _, _ = enrolled(tmp_path)
    state.key_path.unlink()
    with pytest.raises(ConfigError) as caught:
        state.load_credentials()
    assert "agent.key is missing" in str(caught.value)
    assert "tundra agent enroll" in str(caught.value)


def test_loose_key_mode_is_refused_with_the_fix(tmp_path: Path) -> None:
    state, _, _ = enrolled(tmp_path)
    os.chmod(state.key_path, 0o644)
    with pytest.raises(ConfigError) as caught:
        state.load_credentials()
    assert "mode 0644, not 0600" in str(caught.value)
    assert f"chmod 0600 {state.key_path}" in str(caught.value)
    assert any("0644" in p for p in state.problems())


def test_loose_directory_mode_is_refused(tmp_path: Path) -> None:
    state, _, _ = enrolled(tmp_path)
    os.chmod(state.dir, 0o755)  # noqa: S103 (the loose mode under test)
    with pytest.raises(ConfigError) as caught:
        state.load_credentials()
    assert "chmod 0700" in str(caught.value)


def test_symlinked_key_is_refused(tmp_path: Path) -> None:
    state, key_pem, _ = enrolled(tmp_path)
    elsewhere = tmp_path / "elsewhere.key"
    elsewhere.write_bytes(key_pem)
    os.chmod(elsewhere, 0o600)
    state.key_path.unlink()
    state.key_path.symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="symbolic link"):
        state.load_credentials()


def test_certificate_of_another_key_is_refused(tmp_path: Path) -> None:
    state, _, _ = enrolled(tmp_path)
    _, other_cert, _, _ = make_pair()
    state.cert_path.write_bytes(other_cert)
    with pytest.raises(InvalidFile, match="does not belong to the key"):
        state.load_credentials()


@pytest.mark.parametrize("name", ["agent.crt", "ca.pem", "agent.key"])
def test_corrupt_files_are_invalid(tmp_path: Path, name: str) -> None:
    state, _, _ = enrolled(tmp_path)
    (state.dir / name).write_bytes(b"-----BEGIN garbage-----\n")
    with pytest.raises(InvalidFile):
        state.load_credentials()
    assert state.problems()


def test_corrupt_command_keys_are_invalid(tmp_path: Path) -> None:
    state, _, _ = enrolled(tmp_path)
    state.command_keys_path.write_text('{"keys": [{"key_id": "a", "public_key": "AAAA"}]}')
    with pytest.raises(InvalidFile, match="not 32 bytes"):
        state.load_command_keys()
    state.command_keys_path.write_text("[]")
    with pytest.raises(InvalidFile, match="not a command-key file"):
        state.load_command_keys()


def test_store_ca_bundle_refuses_garbage(tmp_path: Path) -> None:
    state, _, _ = enrolled(tmp_path)
    before = state.ca_path.read_bytes()
    with pytest.raises(InvalidFile):
        state.store_ca_bundle(b"not a certificate")
    assert state.ca_path.read_bytes() == before


# -- status ---------------------------------------------------------------------------------


def test_renewal_is_due_at_two_thirds_of_life(tmp_path: Path) -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    _, cert_pem, _, _ = make_pair(hours=24, start=start)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert renewal_due(cert) == start + timedelta(hours=16)


def test_status_reports_dates_and_due_renewal(tmp_path: Path) -> None:
    start = datetime.now(UTC) - timedelta(hours=20)
    state, _, _ = enrolled(tmp_path, hours=24, start=start)
    config = make_config(state.dir)
    report = agent_status(config, tmp_path / "agent.toml")
    assert report.renewal_due is True
    assert report.expired is False
    assert report.problems == []
    assert 0.1 < report.cert_days_left < 0.2  # type: ignore[operator]
    assert len(report.ca_fingerprints) == 1
    later = agent_status(config, tmp_path / "agent.toml", now=start + timedelta(hours=25))
    assert later.expired is True
    assert any("expired" in p for p in later.problems)


def test_status_of_an_empty_state_dir_lists_what_is_missing(tmp_path: Path) -> None:
    config = make_config(tmp_path / "never")
    report = agent_status(config, tmp_path / "agent.toml")
    assert report.cert_serial is None
    assert report.problems and "does not exist" in report.problems[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_status_inspects_a_service_users_state_but_the_daemon_refuses_it(tmp_path: Path) -> None:
    state, _, _ = enrolled(tmp_path)
    for path in [state.dir, *state.dir.iterdir()]:
        os.chown(path, 54321, 54321)
    report = agent_status(make_config(state.dir), tmp_path / "agent.toml")
    assert report.problems == []  # root looks at the unit user's files: all consistent
    with pytest.raises(ConfigError, match="owned by uid 54321"):
        AgentState(state.dir).load_credentials()  # the daemon must run as their owner
