"""`tundra agent enroll|status|revoke` through the CLI boundary.

Enrollment runs against a small real HTTPS panel started here (http.server + ssl on a port from
binding 0) that serves ``/agent/v1/ca.pem`` and answers ``/agent/v1/enroll`` by signing the CSR
with its own CA, so the client's pinning, host-name checking, storage and error reporting are
exercised over real TLS. The host-side commands run with a TUNDRA_HOME that does not exist: they
must not need the control plane's services.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from clihelpers import SQLITE_ONLY, run
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from tundra.agent.config import load_config
from tundra.agent.state import AgentState
from tundra.agent.v1 import agent_pb2
from tundra.cli.exit import ExitStatus
from tundra.core.agents.envelope import key_id_for
from tundra.core.crypto.primitives import new_id
from tundra.core.pki import x509 as x
from tundra.core.principal import cli_principal

# -- a small panel ---------------------------------------------------------------------------


@dataclass
class Panel:
    """What the fake panel serves and what it was sent."""

    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    port: int = 0
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    #: (status, JSON body) to refuse enrollments with, else None to sign.
    refusal: tuple[int, dict[str, Any]] | None = None
    #: Lets a test spoil the answer.
    tamper: Callable[[agent_pb2.EnrollResponse], None] | None = None
    agent_id: str = field(default_factory=new_id)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        return x.cert_to_pem(self.ca_cert)

    def pin(self) -> str:
        return x.fingerprint(self.ca_cert)

    def posts(self) -> list[tuple[str, str, dict[str, str], bytes]]:
        return [r for r in self.requests if r[0] == "POST"]

    def sign(self, request: agent_pb2.EnrollRequest) -> agent_pb2.EnrollResponse:
        csr = x509.load_pem_x509_csr(request.csr_pem)
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "web-1")]))
            .issuer_name(self.ca_cert.subject)
            .public_key(csr.public_key())  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=24))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://tundra/agent/{self.agent_id}")]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(self.ca_key, hashes.SHA256())
        )
        raw = (
            ed25519.Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        return agent_pb2.EnrollResponse(
            agent_id=self.agent_id,
            server_name="web-1",
            certificate_pem=x.cert_to_pem(cert),
            ca_bundle_pem=self.ca_pem,
            gateway_address="localhost:7447",
            command_keys=[agent_pb2.CommandKey(key_id=key_id_for(raw), public_key=raw)],
        )


def handler_for(panel: Panel) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            panel.requests.append(("GET", self.path, dict(self.headers), b""))
            if self.path == "/agent/v1/ca.pem":
                self._answer(200, "application/x-pem-file", panel.ca_pem)
            else:
                self._answer(404, "text/plain", b"not found")

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            panel.requests.append(("POST", self.path, dict(self.headers), body))
            if panel.refusal is not None:
                status, error = panel.refusal
                self._answer(status, "application/json", json.dumps(error).encode())
                return
            response = panel.sign(agent_pb2.EnrollRequest.FromString(body))
            if panel.tamper is not None:
                panel.tamper(response)
            self._answer(200, "application/x-protobuf", response.SerializeToString())

    return Handler


@pytest.fixture
def start_panel(tmp_path: Path) -> Iterator[Callable[..., Panel]]:
    servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(
        *,
        names: tuple[str, ...] = ("localhost", "127.0.0.1"),
        operator_ca: tuple[Any, x509.Certificate] | None = None,
    ) -> Panel:
        ca_key, ca_cert = x.generate_ca("test-panel-ca")
        # The panel's TLS certificate: from the internal CA, or from the operator's own CA.
        tls_key, tls_ca = operator_ca or (ca_key, ca_cert)
        issued = x.issue_server_cert(tls_key, tls_ca, list(names))
        cert_file, key_file = tmp_path / "panel.crt", tmp_path / "panel.key"
        cert_file.write_bytes(x.cert_to_pem(issued.cert))
        key_file.write_bytes(x.key_to_pem(issued.key))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        panel = Panel(ca_key, ca_cert)
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(panel))
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        panel.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        servers.append((server, thread))
        return panel

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def join_token(fingerprint: str) -> str:
    secret = base64.b32encode(os.urandom(32)).decode().rstrip("=").lower()
    return f"tjn1.{secret}.{fingerprint}"


@pytest.fixture
def host(tmp_path: Path) -> dict[str, str]:
    """A managed host's environment: no Tundra home (it must not be needed)."""
    return {"TUNDRA_HOME": str(tmp_path / "no-home-here"), "TUNDRA_AGENT_CONFIG": ""}


def enroll(
    tmp_path: Path, env: dict[str, str], panel: Panel, *extra: str, token: str = ""
) -> Result:
    env = {**env, "TUNDRA_JOIN_TOKEN": token or join_token(panel.pin())}
    return run(
        env,
        "agent",
        "enroll",
        "--url",
        panel.url,
        "--config",
        str(tmp_path / "etc" / "agent.toml"),
        "--state-dir",
        str(tmp_path / "state"),
        *extra,
    )


def assert_one_line_error(result: Result, status: ExitStatus, *fragments: str) -> None:
    assert result.exit_code == status, result.output + result.stderr
    assert "Traceback" not in result.output + result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


# -- enroll ------------------------------------------------------------------------------------


def test_enroll_refuses_a_ca_pin_mismatch_before_sending_the_token(
    tmp_path: Path, host: dict[str, str], start_panel: Callable[..., Panel]
) -> None:
    panel = start_panel()
    other_ca = x.generate_ca("someone-else")[1]
    result = enroll(tmp_path, host, panel, token=join_token(x.fingerprint(other_ca)))
    assert_one_line_error(
        result,
        ExitStatus.PERMISSION_DENIED,
        "does not match the join token's pin",
        "nothing was sent",
    )
    assert [r[:2] for r in panel.requests] == [("GET", "/agent/v1/ca.pem")]
    assert not (tmp_path / "etc" / "agent.toml").exists()
    assert not (tmp_path / "state" / "agent.key").exists()


def test_enroll_stores_key_certificate_and_config(
    tmp_path: Path, host: dict[str, str], start_panel: Callable[..., Panel]
) -> None:
    panel = start_panel()
    token = join_token(panel.pin())
    result = enroll(tmp_path, host, panel, "--json", token=token)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["agent_id"] == panel.agent_id

    ((_, path, headers, body),) = panel.posts()
    assert path == "/agent/v1/enroll"
    assert headers["Content-Type"] == "application/x-protobuf"
    request = agent_pb2.EnrollRequest.FromString(body)
    assert request.join_token == token
    csr = x509.load_pem_x509_csr(request.csr_pem)
    assert csr.is_signature_valid
    assert len(csr.subject) == 0 and len(csr.extensions) == 0  # no names: the panel picks them
    assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey)

    config = load_config(tmp_path / "etc" / "agent.toml")
    assert (config.agent_id, config.server_name, config.gateway) == (
        panel.agent_id,
        "web-1",
        "localhost:7447",
    )
    assert config.panel_url == panel.url
    state = AgentState(config.state_dir)
    assert stat.S_IMODE(state.dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(state.key_path.stat().st_mode) == 0o600
    assert state.load_credentials().ca_bundle_pem == panel.ca_pem
    assert len(state.load_command_keys()) == 1

    shown = run(host, "agent", "status", "--config", str(tmp_path / "etc" / "agent.toml"), "--json")
    assert shown.exit_code == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["agent_id"] == panel.agent_id
    assert report["problems"] == []
    assert report["renewal_due"] is False
    assert report["ca_fingerprints"] == [panel.pin()]


def test_enroll_checks_the_panel_host_name(
    tmp_path: Path, host: dict[str, str], start_panel: Callable[..., Panel]
) -> None:
    panel = start_panel(names=("panel.example.net",))  # not 127.0.0.1, the URL's host
    result = enroll(tmp_path, host, panel)
    assert_one_line_error(result, ExitStatus.CONFIG, "does not verify", "panel_hostnames")
    assert panel.posts() == []


def test_enroll_behind_an_operator_certificate_needs_its_ca(
    tmp_path: Path, host: dict[str, str], start_panel: Callable[..., Panel]
) -> None:
    operator_ca = x.generate_ca("operator-private-ca")
    panel = start_panel(operator_ca=operator_ca)
    refused = enroll(tmp_path, host, panel)
    assert_one_line_error(refused, ExitStatus.CONFIG, "does not verify", "--ca-file")
    assert panel.posts() == []
    ca_file = tmp_path / "operator-ca.pem"
    ca_file.write_bytes(x.cert_to_pem(operator_ca[1]))
    accepted = enroll(tmp_path, host, panel, "--ca-file", str(ca_file))
    assert accepted.exit_code == 0, accepted.stderr
    # The gateway is still trusted through the internal CA the token pinned.
    state = AgentState(tmp_path / "state")
    assert state.load_credentials().ca_bundle_pem == panel.ca_pem


def test_enroll_reports_the_panel_refusal_with_a_hint(
    tmp_path: Path, host: dict[str, str], start_panel: Callable[..., Panel]
) -> None:
    panel = start_panel()
    panel.refusal = (
        403,
        {
            "error": {
                "code": "agent_refused",
                "message": "the join token was already used",
                "reason": "token-used",
            }
        },
    )
    result = enroll(tmp_path, host, panel)
    assert_one_line_error(
        result,
        ExitStatus.PERMISSION_DENIED,
        "the panel refused the enrollment: the join token was already used",
        "tundra server token NAME",
    )
    assert not (tmp_path / "etc" / "agent.toml").exists()


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda r: setattr(r, "agent_id", new_id()), "does not name agent"),
        (
            lambda r: setattr(r, "ca_bundle_pem", x.cert_to_pem(x.generate_ca("x")[1])),
            "not signed by a CA of the bundle",
        ),
        (lambda r: setattr(r, "gateway_address", "no-port"), "gateway address"),
        (lambda r: r.ClearField("command_keys"), "command keys"),
    ],
    ids=["identity", "issuer", "gateway", "keys"],
)
def test_enroll_refuses_a_confused_answer_and_stores_nothing(
    tmp_path: Path,
    host: dict[str, str],
    start_panel: Callable[..., Panel],
    spoil: Callable[[agent_pb2.EnrollResponse], None],
    message: str,
) -> None:
    panel = start_panel()
    panel.tamper = spoil
    result = enroll(tmp_path, host, panel)
    assert_one_line_error(result, ExitStatus.DATA_ERROR, message)
    assert not (tmp_path / "state" / "agent.key").exists()
    assert not (tmp_path / "etc" / "agent.toml").exists()


def test_a_malformed_token_is_refused_without_contacting_the_panel(
    tmp_path: Path, host: dict[str, str], start_panel: Callable[..., Panel]
) -> None:
    panel = start_panel()
    result = enroll(tmp_path, host, panel, token="tjn1.nope")
    assert_one_line_error(result, ExitStatus.PERMISSION_DENIED, "malformed")
    assert panel.requests == []


def test_token_sources(
    tmp_path: Path, host: dict[str, str], start_panel: Callable[..., Panel]
) -> None:
    panel = start_panel()
    base = [
        "agent",
        "enroll",
        "--url",
        panel.url,
        "--config",
        str(tmp_path / "a.toml"),
        "--state-dir",
        str(tmp_path / "s"),
    ]
    both = run(host, *base, "--token", "x", "--token-env", "Y")
    assert_one_line_error(both, ExitStatus.USAGE, "only one of")
    none = run({**host, "TUNDRA_JOIN_TOKEN": ""}, *base)
    assert_one_line_error(none, ExitStatus.USAGE, "no join token", "TUNDRA_JOIN_TOKEN")

    token_file = tmp_path / "token"
    token_file.write_text(join_token(panel.pin()) + "\n")
    from_file = run(host, *base, "--token-file", str(token_file))
    assert from_file.exit_code == 0, from_file.stderr

    on_command_line = run(host, *base, "--token", join_token(panel.pin()))
    assert on_command_line.exit_code == 0, on_command_line.stderr
    assert "shell history" in on_command_line.stderr

    from_variable = run(
        {**host, "MY_TOKEN": join_token(panel.pin())}, *base, "--token-env", "MY_TOKEN"
    )
    assert from_variable.exit_code == 0, from_variable.stderr
    assert len(panel.posts()) == 3


def test_a_bad_url_is_a_usage_error(tmp_path: Path, host: dict[str, str]) -> None:
    result = run(
        {**host, "TUNDRA_JOIN_TOKEN": join_token("0" * 64)},
        "agent",
        "enroll",
        "--url",
        "http://panel:8080",
        "--config",
        str(tmp_path / "a.toml"),
        "--state-dir",
        str(tmp_path / "s"),
    )
    assert_one_line_error(result, ExitStatus.USAGE, "invalid panel URL")


# -- status ------------------------------------------------------------------------------------


def test_status_without_a_config_says_enroll(tmp_path: Path, host: dict[str, str]) -> None:
    result = run(host, "agent", "status", "--config", str(tmp_path / "none.toml"))
    assert_one_line_error(
        result, ExitStatus.CONFIG, "no agent configuration", "tundra agent enroll"
    )


def test_status_flags_a_loose_key_and_exits_1(
    tmp_path: Path, host: dict[str, str], start_panel: Callable[..., Panel]
) -> None:
    assert enroll(tmp_path, host, start_panel()).exit_code == 0
    key = tmp_path / "state" / "agent.key"
    os.chmod(key, 0o644)
    config = str(tmp_path / "etc" / "agent.toml")
    table = run(host, "agent", "status", "--config", config)
    assert table.exit_code == 1
    assert "0644" in table.stdout
    report = run(host, "agent", "status", "--config", config, "--json")
    assert report.exit_code == 1
    assert any(f"chmod 0600 {key}" in p for p in json.loads(report.stdout)["problems"])


# -- revoke (control plane) --------------------------------------------------------------------


def enrolled_agent(services: Any) -> str:
    """Enroll an agent for web-1 through the core, as the panel's endpoint would."""
    services.servers.add(cli_principal(), name="web-1", address="127.0.0.1")
    token = services.enrollment.create_join_token(cli_principal(), "web-1").token
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    enrollment = services.enrollment.enroll(
        join_token=token,
        csr_pem=csr.public_bytes(serialization.Encoding.PEM),
        agent_version="test",
        hostname="web-1",
        source_address="127.0.0.1",
    )
    return str(enrollment.agent_id)


@SQLITE_ONLY
def test_revoke_asks_then_revokes(services: Any, env: dict[str, str]) -> None:
    agent_id = enrolled_agent(services)
    declined = run(env, "agent", "revoke", "web-1", stdin="n\n")
    assert declined.exit_code == ExitStatus.FAILURE
    assert services.agents.for_server(cli_principal(), "web-1").status == "active"

    result = run(env, "agent", "revoke", "web-1", "--yes")
    assert result.exit_code == 0, result.stderr
    assert agent_id in result.stderr
    agent = services.agents.for_server(cli_principal(), "web-1")
    assert (agent.id, agent.status) == (agent_id, "revoked")


@SQLITE_ONLY
def test_revoke_of_an_unknown_server_is_not_found(env: dict[str, str]) -> None:
    result = run(env, "agent", "revoke", "nope", "--yes")
    assert_one_line_error(result, ExitStatus.NOT_FOUND, "nope")
