"""POST /agent/v1/enroll and GET /agent/v1/ca.pem through the real app: protobuf in and out, the
JSON error shape with the right status for refusals (403), bad input (422), media type (415),
size (413) and throttling (429), and no cookie/CSRF machinery in the way."""

from __future__ import annotations

import hashlib
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.testclient import TestClient
from test_api_support import Api, api_fixture, error_of  # noqa: F401
from test_pages_support import BOB, BOB_PASSWORD, Browser, add_bob, check_page, panel_fixture  # noqa: F401

from tundra.agent.v1 import agent_pb2
from tundra.core.agents.enrollment import MAX_FAILURES_PER_MINUTE
from tundra.core.audit.actions import Action
from tundra.core.principal import SYSTEM
from tundra.core.services import Services
from tundra.panel.app import create_app
from tundra.panel.enroll import MAX_BODY, MEDIA_TYPE

SQLITE_ONLY = pytest.mark.parametrize("database_url", [""], ids=["sqlite"])
PROTOBUF = {"content-type": MEDIA_TYPE}


@pytest.fixture
def client(services: Services) -> TestClient:
    # Not entered as a context manager: the lifespan would close the fixture's services.
    return TestClient(
        create_app(services),
        base_url="https://testserver",
        raise_server_exceptions=False,
        follow_redirects=False,
    )


def csr_pem(*, dns: str | None = None) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def new_token(services: Services, name: str = "web-1") -> str:
    server = services.servers.add(SYSTEM, name=name, address="127.0.0.1", join_token=True)
    assert server.join_token is not None
    return server.join_token.token


def request_body(token: str, csr: bytes | None = None) -> bytes:
    return agent_pb2.EnrollRequest(
        join_token=token, csr_pem=csr or csr_pem(), agent_version="0.4.0", hostname="web-1"
    ).SerializeToString()


def test_ca_bundle_is_public_pem(services, client) -> None:
    answer = client.get("/agent/v1/ca.pem")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/x-pem-file")
    assert answer.content == services.pki.ca_bundle_pem()
    ca = x509.load_pem_x509_certificate(answer.content)
    assert hashlib.sha256(ca.public_bytes(serialization.Encoding.DER)).hexdigest() == (
        services.pki.ca_fingerprint()
    )
    assert "set-cookie" not in answer.headers


def test_enrollment_answers_an_enroll_response(services, client) -> None:
    token = new_token(services)
    # A cross-site looking request with no cookies at all: nothing about CSRF applies here.
    answer = client.post(
        "/agent/v1/enroll",
        content=request_body(token),
        headers={
            **PROTOBUF,
            "origin": "https://elsewhere.example",
            "sec-fetch-site": "cross-site",
            "x-request-id": "req-enroll-1",
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == MEDIA_TYPE
    assert "set-cookie" not in answer.headers
    response = agent_pb2.EnrollResponse.FromString(answer.content)
    assert response.server_name == "web-1"
    assert response.gateway_address == services.pki.gateway_address()
    assert response.ca_bundle_pem == services.pki.ca_bundle_pem()
    assert [(k.key_id, k.public_key) for k in response.command_keys] == (
        services.command_signer.public_keys()
    )
    cert = x509.load_pem_x509_certificate(response.certificate_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [
        x509.UniformResourceIdentifier(f"spiffe://tundra/agent/{response.agent_id}")
    ]
    agent = services.agents.identify(response.agent_id, format(cert.serial_number, "x"))
    assert agent.server_name == "web-1"
    (row,) = [r for r in services.audit.list(limit=100, action=Action.AGENT_ENROLL)]
    assert row.request_id == "req-enroll-1"
    assert row.details["source"] == "testclient"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("used", "token-used"),
        ("unknown", "token-unknown"),
        ("names", "csr-names"),
        ("bad-csr", "csr-invalid"),
        ("malformed", "token-malformed"),
    ],
)
def test_refusals_are_403_in_the_error_shape(services, client, case: str, reason: str) -> None:
    token = new_token(services)
    if case == "used":
        assert (
            client.post(
                "/agent/v1/enroll", content=request_body(token), headers=PROTOBUF
            ).status_code
            == 200
        )
    bodies = {
        "used": request_body(token),
        "unknown": request_body("tjn1." + "a" * 52 + "." + services.pki.ca_fingerprint()),
        "names": request_body(token, csr_pem(dns="evil.example")),
        "bad-csr": request_body(token, b"not a csr"),
        "malformed": request_body("tjn1.nope"),
    }
    answer = client.post("/agent/v1/enroll", content=bodies[case], headers=PROTOBUF)
    assert answer.status_code == 403, answer.text
    error = error_of(answer)
    assert error["code"] == "agent_refused"
    refusals = services.audit.list(limit=100, action=Action.AGENT_ENROLL_REFUSED)
    assert [r.details["reason"] for r in refusals] == [reason]


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"\xff\xff\xff", PROTOBUF, 422, "invalid_input"),
        (b"", PROTOBUF, 422, "invalid_input"),
        (
            agent_pb2.EnrollRequest(hostname="x" * 300, join_token="t").SerializeToString(),
            PROTOBUF,
            422,
            "invalid_input",
        ),
        (
            agent_pb2.EnrollRequest(hostname="h", join_token="t").SerializeToString(),
            PROTOBUF,
            403,
            "agent_refused",
        ),
        (b"{}", {"content-type": "application/json"}, 415, "unsupported_media_type"),
        (b"x", {}, 415, "unsupported_media_type"),
        (b"\x0a" * (MAX_BODY + 1), PROTOBUF, 413, "payload_too_large"),
    ],
)
def test_bad_requests(client, body: bytes, headers: dict, status: int, code: str) -> None:
    answer = client.post("/agent/v1/enroll", content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert error_of(answer)["code"] == code


@SQLITE_ONLY
def test_an_unusable_host_name_is_422(services, client) -> None:
    token = new_token(services)
    body = agent_pb2.EnrollRequest(
        join_token=token, csr_pem=csr_pem(), agent_version="1", hostname="a b"
    ).SerializeToString()
    answer = client.post("/agent/v1/enroll", content=body, headers=PROTOBUF)
    assert answer.status_code == 422
    assert error_of(answer)["code"] == "invalid_input"


def test_a_source_that_keeps_failing_gets_429(services, client) -> None:
    token = new_token(services)
    unknown = request_body("tjn1." + "a" * 52 + "." + services.pki.ca_fingerprint())
    for _ in range(MAX_FAILURES_PER_MINUTE):
        assert client.post("/agent/v1/enroll", content=unknown, headers=PROTOBUF).status_code == 403
    answer = client.post("/agent/v1/enroll", content=request_body(token), headers=PROTOBUF)
    assert answer.status_code == 429
    assert error_of(answer)["code"] == "throttled"
    assert 1 <= int(answer.headers["retry-after"]) <= 61


@SQLITE_ONLY
def test_other_methods_are_not_allowed(client) -> None:
    assert client.get("/agent/v1/enroll").status_code == 405
    assert client.post("/agent/v1/ca.pem").status_code == 405


def test_the_api_returns_a_join_token_once_when_asked(services, client, api: Api) -> None:
    token = api.token("servers:read", "servers:write")
    created = api.call(
        "POST",
        "/api/v1/servers",
        token,
        request_id="req-add-with-token",
        json={"name": "web-1", "address": "127.0.0.1", "join_token": True},
    )
    assert created.status_code == 201, created.text
    join = created.json()["join_token"]
    assert join["enroll_command"].endswith("--token-env TUNDRA_JOIN_TOKEN")
    assert "join_token" not in api.call("GET", "/api/v1/servers/web-1", token).json()
    listed = api.call("GET", "/api/v1/servers", token).json()["servers"]
    assert listed[0]["agent"] is None and listed[0]["connection"] is None
    (row,) = services.audit.list(limit=10, action=Action.JOIN_TOKEN_CREATE)
    assert row.request_id == "req-add-with-token"
    answer = client.post("/agent/v1/enroll", content=request_body(join["token"]), headers=PROTOBUF)
    assert answer.status_code == 200
    shown = api.call("GET", "/api/v1/servers/web-1", token).json()
    assert shown["status"] == "enrolled" and shown["connection"] == "never"
    assert shown["agent"]["id"] == agent_pb2.EnrollResponse.FromString(answer.content).agent_id
    plain = api.call(
        "POST", "/api/v1/servers", token, json={"name": "web-2", "address": "127.0.0.2"}
    )
    assert "join_token" not in plain.json()


def test_the_server_pages_show_the_agent_and_a_join_token_once(client, panel: Browser) -> None:
    services = panel.services
    services.servers.add(SYSTEM, name="web-1", address="127.0.0.1")
    panel.login()
    pending = panel.get("/servers/web-1")
    assert "No agent has enrolled" in pending.text and "Make a join token" in pending.text
    answer = panel.post("/servers/web-1/token")
    assert answer.status_code == 201, answer.text
    assert check_page(answer.text).problems == []
    found = re.search(r'value="(tjn1\.[a-z2-7]{52}\.[0-9a-f]{64})"', answer.text)
    assert found is not None
    token = found.group(1)
    assert "tundra agent enroll --url https://localhost:8443 --token-env TUNDRA_JOIN_TOKEN" in (
        answer.text
    )
    enrolled = client.post("/agent/v1/enroll", content=request_body(token), headers=PROTOBUF)
    agent_id = agent_pb2.EnrollResponse.FromString(enrolled.content).agent_id
    services.agents.mark_connected(
        agent_id,
        address="127.0.0.1",
        agent_version="0.4.2",
        hostname="web-1",
        facts={"os": "Debian GNU/Linux 12", "cpu_count": 2},
    )
    detail = panel.get("/servers/web-1")
    assert detail.status_code == 200 and token not in detail.text
    assert check_page(detail.text).problems == []
    for text in ("connected", "0.4.2", "Debian GNU/Linux 12", agent_id, "Certificate expires"):
        assert text in detail.text, text
    listing = panel.get("/servers")
    row = next(r for r in listing.text.split("<tr>") if "/servers/web-1" in r)
    assert "connected" in row and "0.4.2" in row and "enrolled" in row


def test_only_writers_make_join_tokens_in_the_panel(panel: Browser) -> None:
    add_bob(panel.services)
    panel.services.servers.add(SYSTEM, name="web-1", address="127.0.0.1")
    panel.login(BOB, BOB_PASSWORD)
    assert "join token" not in panel.get("/servers/web-1").text
    assert panel.post("/servers/web-1/token").status_code == 403
    with panel.services.db.read() as tx:
        assert tx.fetchval("SELECT count(*) FROM join_tokens") == 0
