"""AG-01 … AG-06 against the real gateway (which must pass) and misconfigured stand-ins (which
must fail): Python ``ssl`` and ``openssl s_server`` mTLS servers with TLS 1.2 allowed, a client
certificate optional or not asked for, a foreign CA trusted, no ALPN, a server certificate from
another CA; a gRPC server without the policy interceptor; command guards that forget nonces or
ignore the clock; a control plane that records a replayed result.

The gateway runs in-process on 127.0.0.1 (port 0) over the embedded database, with a test agent
enrolled through core at 127.0.0.1. AG-05 from a real outside address (a network namespace) is
in tests/integration/test_agent_checks_outside.py.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agentgatewayfixtures import (
    ClockBlindGuard,
    Deployment,
    ForgetfulGuard,
    InMemoryNonceGuard,
    deployment,
    grpc_stand_in,
    openssl_available,
    openssl_stand_in,
    server_context,
    tls_stand_in,
)

from tundra.agent.guard import CommandGuard
from tundra.agent.v1 import agent_pb2
from tundra.core.acceptance import runner
from tundra.core.acceptance.checks import agent as checks
from tundra.core.acceptance.context import RunContext, RunOptions
from tundra.core.acceptance.model import Outcome, Status
from tundra.core.acceptance.registry import default_registry
from tundra.core.pki import x509 as x
from tundra.core.principal import SYSTEM

REQUIRE = os.environ.get("TUNDRA_REQUIRE_SERVICES") == "1"
Check = Callable[[RunContext], Outcome]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(tmp_path_factory.mktemp("agent-checks")) as running:
        yield running


@pytest.fixture
def guard_installed() -> Iterator[Callable[[Any], None]]:
    previous = checks.installed_command_guard()

    def install(factory: Any) -> None:
        checks.install_command_guard(factory)

    yield install
    checks.install_command_guard(previous)


def run(check: Check, options: RunOptions) -> Outcome:
    return check(RunContext(options))


def need_openssl() -> None:
    if not openssl_available():
        reason = "the openssl command is not installed (Debian package openssl)"
        if REQUIRE:
            pytest.fail(reason)
        pytest.skip(reason)


def foreign_client_ca() -> bytes:
    return x.cert_to_pem(x.generate_ca("Somebody else's CA")[1])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the protobuf codec ------------------------------------------------------------------------


def test_the_codec_agrees_with_the_generated_stubs() -> None:
    hello = agent_pb2.AgentMessage.FromString(checks.hello_message("agent-1"))
    assert hello.WhichOneof("kind") == "hello"
    assert hello.hello.agent_id == "agent-1"
    assert hello.hello.agent_version == checks.AGENT_VERSION
    assert hello.hello.facts.hostname == "tundra-acceptance"
    beat = agent_pb2.AgentMessage.FromString(checks.heartbeat_message(300, sent_at_ms=5))
    assert (beat.heartbeat.sequence, beat.heartbeat.sent_at_ms) == (300, 5)
    result = agent_pb2.AgentMessage.FromString(
        checks.result_message("c-1", checks.RESULT_FAILED, {"a": 1}, "why")
    )
    assert result.result.command_id == "c-1"
    assert result.result.status == agent_pb2.CommandResult.STATUS_FAILED
    assert json.loads(result.result.output_json) == {"a": 1}
    assert result.result.error == "why"

    keys = [agent_pb2.CommandKey(key_id="k1", public_key=b"\x01" * 32)]
    welcome = agent_pb2.ControlMessage(
        welcome=agent_pb2.Welcome(agent_id="a", heartbeat_seconds=15, command_keys=keys)
    )
    parsed = checks.parse_control(welcome.SerializeToString())
    assert (parsed.kind, parsed.agent_id, parsed.command_keys) == (
        "welcome",
        "a",
        {"k1": b"\1" * 32},
    )
    signed = agent_pb2.SignedCommand(envelope=b"{}", signature=b"s" * 64, key_id="k1")
    parsed = checks.parse_control(agent_pb2.ControlMessage(command=signed).SerializeToString())
    assert parsed.command == checks.SignedCommand(b"{}", b"s" * 64, "k1")
    ack = agent_pb2.ControlMessage(heartbeat_ack=agent_pb2.HeartbeatAck(sequence=2**40))
    assert checks.parse_control(ack.SerializeToString()).ack == 2**40


@pytest.mark.parametrize("data", [b"\x0a\x05ab", b"\x80", b"\x0b", b"\x00\x01"])
def test_the_codec_refuses_broken_messages(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"truncated|overlong|wire type|field number"):
        checks.decode_fields(data)


# --- AG-01 -------------------------------------------------------------------------------------


def test_ag01_the_real_gateway_refuses_tls12(live: Deployment) -> None:
    outcome = run(checks.tls12_refused, live.options())
    assert outcome.status is Status.PASS, outcome
    assert outcome.evidence["tls12"]["handshake_ok"] is False
    assert outcome.evidence["tls13_control"]["version"] == "TLSv1.3"
    assert outcome.evidence["tls12"]["offered"]["client_cert"] == "the test agent identity"


def test_ag01_a_server_allowing_tls12_fails(live: Deployment) -> None:
    context = server_context(
        live.server_cert, live.server_key, client_ca=live.ca_pem, minimum=ssl.TLSVersion.TLSv1_2
    )
    with tls_stand_in(context) as port:
        outcome = run(checks.tls12_refused, live.options(port=port))
    assert outcome.status is Status.FAIL, outcome
    assert outcome.summary.startswith("a TLS 1.2 handshake with a valid client certificate")
    assert outcome.evidence["tls12"]["version"] == "TLSv1.2"


def test_ag01_openssl_s_server_with_tls12_fails(live: Deployment, tmp_path: Path) -> None:
    need_openssl()
    ca = tmp_path / "ca.pem"
    ca.write_bytes(live.ca_pem)
    args = ("-tls1_2", "-Verify", "1", "-CAfile", str(ca), "-alpn", "h2")
    with openssl_stand_in(live.server_cert, live.server_key, *args) as port:
        outcome = run(checks.tls12_refused, live.options(port=port))
    assert outcome.status is Status.FAIL, outcome
    assert outcome.evidence["tls12"]["handshake_ok"] is True


def test_ag01_a_failed_tls13_control_is_an_error_not_a_pass(live: Deployment) -> None:
    # Refuses TLS 1.2, but also refuses every client certificate: nothing is proven.
    context = server_context(live.server_cert, live.server_key, client_ca=foreign_client_ca())
    with tls_stand_in(context) as port:
        outcome = run(checks.tls12_refused, live.options(port=port))
    assert outcome.status is Status.ERROR, outcome
    assert "the TLS 1.3 control with the same certificate failed too" in outcome.summary


# --- AG-02 -------------------------------------------------------------------------------------


def test_ag02_the_real_gateway_refuses_a_client_without_certificate(live: Deployment) -> None:
    outcome = run(checks.no_certificate_refused, live.options())
    assert outcome.status is Status.PASS, outcome
    # TLS 1.3: the handshake completes; the refusal comes on the first read.
    anonymous = outcome.evidence["without_certificate"]
    assert anonymous["handshake_ok"] is True
    assert anonymous["after_read"] != "data"
    assert outcome.summary.startswith("refused on the first read after the handshake")
    assert outcome.evidence["control"]["accepted"] is True


def test_ag02_a_requested_but_optional_certificate_fails(live: Deployment) -> None:
    context = server_context(
        live.server_cert, live.server_key, client_ca=live.ca_pem, verify_mode=ssl.CERT_OPTIONAL
    )
    with tls_stand_in(context) as port:
        outcome = run(checks.no_certificate_refused, live.options(port=port))
    assert outcome.status is Status.FAIL, outcome
    assert outcome.summary == (
        "a TLSv1.3 client without a certificate completed the handshake and the server answered "
        "(HTTP/2 SETTINGS)"
    )


def test_ag02_a_silent_server_that_asks_for_nothing_fails(live: Deployment) -> None:
    context = server_context(
        live.server_cert, live.server_key, client_ca=None, verify_mode=ssl.CERT_NONE
    )
    with tls_stand_in(context, answer=False) as port:
        outcome = run(checks.no_certificate_refused, live.options(port=port))
    assert outcome.status is Status.FAIL, outcome
    assert "kept the connection open without an alert" in outcome.summary
    assert outcome.evidence["without_certificate"]["after_read"] == "timeout"


def test_ag02_openssl_s_server_with_lowercase_verify_fails(live: Deployment) -> None:
    # -verify asks for a certificate; only -Verify requires one.
    need_openssl()
    with openssl_stand_in(live.server_cert, live.server_key, "-verify", "1") as port:
        outcome = run(checks.no_certificate_refused, live.options(port=port))
    assert outcome.status is Status.FAIL, outcome


def test_ag02_a_server_refusing_everyone_is_inconclusive(live: Deployment) -> None:
    context = server_context(live.server_cert, live.server_key, client_ca=foreign_client_ca())
    with tls_stand_in(context) as port:
        outcome = run(checks.no_certificate_refused, live.options(port=port))
    assert outcome.status is Status.ERROR, outcome
    assert "refused the valid test identity as well" in outcome.summary


def test_ag02_an_unreachable_gateway_is_an_error(live: Deployment) -> None:
    outcome = run(checks.no_certificate_refused, live.options(port=closed_port()))
    assert outcome.status is Status.ERROR
    assert "is not reachable" in outcome.summary


# --- AG-03 -------------------------------------------------------------------------------------


def acceptance_servers(live: Deployment) -> list[str]:
    return [s.name for s in live.services.servers.list(SYSTEM) if s.name.startswith("acceptance-")]


def test_ag03_the_real_gateway_refuses_every_bad_certificate(live: Deployment) -> None:
    outcome = run(checks.bad_certificates_refused, live.options())
    assert outcome.status is Status.PASS, outcome
    assert outcome.summary == "refused: foreign_ca, expired, no_client_auth, revoked"
    variants = outcome.evidence["variants"]
    assert variants["foreign_ca"]["why"].startswith("TLS refused it")
    assert variants["expired"]["why"].startswith("TLS refused it")
    assert variants["no_client_auth"]["why"].startswith("TLS refused it")
    # A revoked certificate still chains to the CA: the policy refuses it per call.
    assert variants["revoked"]["rpc"]["code"] == "PERMISSION_DENIED"
    assert outcome.evidence["control"]["verdict"] == "accepted"
    assert acceptance_servers(live) == []  # the throwaway server is gone


def test_ag03_remotely_only_the_foreign_ca_is_evaluated(live: Deployment) -> None:
    outcome = run(checks.bad_certificates_refused, live.options(local=False))
    assert outcome.status is Status.PASS, outcome
    assert outcome.summary == (
        "refused: foreign_ca; not evaluated remotely: expired, no_client_auth, revoked "
        "(run with --local)"
    )
    assert outcome.evidence["variants"]["expired"]["verdict"] == "not evaluated"


def test_ag03_a_gateway_without_the_policy_accepts_a_revoked_certificate(
    live: Deployment,
) -> None:
    with grpc_stand_in(live) as port:
        outcome = run(checks.bad_certificates_refused, live.options(port=port))
    assert outcome.status is Status.FAIL, outcome
    assert outcome.summary.startswith("accepted: revoked (")
    assert outcome.evidence["variants"]["expired"]["verdict"] == "refused"
    assert acceptance_servers(live) == []


def test_ag03_a_gateway_without_client_authentication_accepts_everything(
    live: Deployment,
) -> None:
    with grpc_stand_in(live, require_client_auth=False) as port:
        outcome = run(checks.bad_certificates_refused, live.options(port=port))
    assert outcome.status is Status.FAIL, outcome
    verdicts = {name: v["verdict"] for name, v in outcome.evidence["variants"].items()}
    assert set(verdicts.values()) == {"accepted"}, verdicts


def test_ag03_a_server_trusting_the_foreign_ca_fails_remotely(
    live: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    foreign = x.generate_ca("Foreign CA the stand-in trusts")
    monkeypatch.setattr(checks, "make_foreign_ca", lambda: foreign)
    trusted = live.ca_pem + x.cert_to_pem(foreign[1])
    context = server_context(live.server_cert, live.server_key, client_ca=trusted)
    with tls_stand_in(context) as port:
        outcome = run(checks.bad_certificates_refused, live.options(port=port, local=False))
    assert outcome.status is Status.FAIL, outcome
    assert outcome.summary == "accepted: foreign_ca (the TLS layer accepted it)"


# --- AG-04 -------------------------------------------------------------------------------------


def test_ag04_the_real_gateway_completes_tls13_with_h2(live: Deployment) -> None:
    outcome = run(checks.valid_certificate_works, live.options())
    assert outcome.status is Status.PASS, outcome
    assert outcome.evidence["handshake"]["alpn"] == "h2"
    assert outcome.evidence["chain_verified"] is True
    assert "verified against the local internal CA bundle" in outcome.summary


def test_ag04_remotely_with_ca_file(live: Deployment) -> None:
    outcome = run(checks.valid_certificate_works, live.options(local=False))
    assert outcome.status is Status.PASS, outcome
    assert outcome.evidence["ca"] == f"--ca-file {live.agent.ca}"


def test_ag04_without_alpn_h2_fails(live: Deployment) -> None:
    context = server_context(live.server_cert, live.server_key, client_ca=live.ca_pem, alpn=())
    with tls_stand_in(context) as port:
        outcome = run(checks.valid_certificate_works, live.options(port=port))
    assert outcome.status is Status.FAIL, outcome
    assert outcome.summary == "ALPN: the gateway selected None, not 'h2'"


def test_ag04_a_gateway_certificate_from_another_ca_fails(live: Deployment, tmp_path: Path) -> None:
    other_key, other_ca = x.generate_ca("Another CA")
    leaf = x.issue_server_cert(other_key, other_ca, ["127.0.0.1"], days=1)
    cert, key = tmp_path / "leaf.crt", tmp_path / "leaf.key"
    cert.write_bytes(x.cert_to_pem(leaf.cert))
    key.write_bytes(x.key_to_pem(leaf.key))
    with tls_stand_in(server_context(cert, key, client_ca=live.ca_pem)) as port:
        outcome = run(checks.valid_certificate_works, live.options(port=port))
    assert outcome.status is Status.FAIL, outcome
    assert outcome.summary.startswith(
        "the gateway's certificate does not verify against the local internal CA bundle"
    )


def test_ag04_a_gateway_refusing_the_valid_certificate_fails(live: Deployment) -> None:
    context = server_context(live.server_cert, live.server_key, client_ca=foreign_client_ca())
    with tls_stand_in(context) as port:
        outcome = run(checks.valid_certificate_works, live.options(port=port))
    assert outcome.status is Status.FAIL, outcome
    assert outcome.summary.startswith("the gateway refused the valid agent certificate")


# --- AG-05 (from the runner itself; the network namespace is in tests/integration) -------------


def test_ag05_the_real_gateway_refuses_an_untrusted_source(live: Deployment) -> None:
    outcome = run(checks.source_allowlist, live.options())
    assert outcome.status is Status.PASS, outcome
    assert outcome.evidence["probe"]["rpc"]["code"] == "PERMISSION_DENIED"
    assert "not trusted" in outcome.evidence["probe"]["rpc"]["details"]
    assert outcome.evidence["probe"]["source"] == "127.0.0.1"
    assert "203.0.113.77/32" in outcome.evidence["trusted_networks"]
    assert acceptance_servers(live) == []


def test_ag05_a_gateway_without_the_policy_fails(live: Deployment) -> None:
    with grpc_stand_in(live) as port:
        outcome = run(checks.source_allowlist, live.options(port=port))
    assert outcome.status is Status.FAIL, outcome
    assert outcome.summary == (
        "a Session from 127.0.0.1, an untrusted address, was accepted (the gateway sent Welcome)"
    )


def test_ag05_a_closed_port_passes(live: Deployment) -> None:
    outcome = run(checks.source_allowlist, live.options(port=closed_port()))
    assert outcome.status is Status.PASS, outcome
    assert outcome.summary == "the gateway port is refused from the runner"


def test_ag05_remotely_from_the_runner_is_a_skip(live: Deployment) -> None:
    outcome = run(checks.source_allowlist, live.options(local=False))
    assert outcome.status is Status.SKIP
    assert "cannot tell whether its own address is trusted" in outcome.summary


def test_ag05_refuses_a_loopback_gateway_with_an_outside_probe(live: Deployment) -> None:
    options = live.options(outside_probe=("ip", "netns", "exec", "nowhere"))
    outcome = run(checks.source_allowlist, options)
    assert outcome.status is Status.ERROR
    assert "loopback" in outcome.summary


def test_ag05_judging_probe_answers() -> None:
    identity = checks.AgentIdentity("a1", 1, b"", b"", "test identity")
    judge = checks.judge_allowlist
    assert (
        judge({"tcp": "filtered"}, identity=None, vantage="v", trusted=None).status is Status.PASS
    )
    trusted = judge(
        {"tcp": "open", "source": "10.0.0.1"},
        identity=identity,
        vantage="v",
        trusted=lambda a: True,
    )
    assert trusted.status is Status.SKIP
    assert "is trusted for the agent" in trusted.summary
    no_identity = judge({"tcp": "open"}, identity=None, vantage="v", trusted=None)
    assert no_identity.status is Status.SKIP
    unavailable = judge(
        {"tcp": "open", "rpc": {"code": "UNAVAILABLE", "details": "x"}},
        identity=identity,
        vantage="v",
        trusted=None,
    )
    assert unavailable.status is Status.ERROR
    unauthenticated = judge(
        {"tcp": "open", "rpc": {"code": "UNAUTHENTICATED", "details": "unknown"}},
        identity=identity,
        vantage="v",
        trusted=None,
    )
    assert unauthenticated.status is Status.ERROR


# --- AG-06 -------------------------------------------------------------------------------------


def test_ag06_the_real_guard_and_gateway_refuse_replays(
    live: Deployment, guard_installed: Callable[[Any], None]
) -> None:
    guard_installed(CommandGuard)
    outcome = run(checks.replay_refused, live.options())
    assert outcome.status is Status.PASS, outcome
    verdicts = outcome.evidence["agent_guard"]
    assert verdicts["first_delivery"] == "accepted"
    assert verdicts["replay"].startswith("refused (replay)")
    assert verdicts["replay_after_restart"].startswith("refused (replay)")
    assert verdicts["at_expiry"].startswith("refused (expired)")
    after = outcome.evidence["gateway"]["record_after_replay"]
    assert after == {"status": "succeeded", "output": {"probe": "AG-06"}, "error": None}
    command_id = outcome.evidence["command"]["id"]
    assert live.services.commands.get(SYSTEM, command_id).status == "succeeded"


def test_ag06_a_guard_without_nonces_fails(
    live: Deployment, guard_installed: Callable[[Any], None]
) -> None:
    guard_installed(ForgetfulGuard)
    outcome = run(checks.replay_refused, live.options())
    assert outcome.status is Status.FAIL, outcome
    assert outcome.summary == (
        "the agent's guard accepted a replayed command; the agent's guard accepted a command "
        "replayed after a guard restart"
    )


def test_ag06_a_guard_forgetting_nonces_on_restart_fails(
    live: Deployment, guard_installed: Callable[[Any], None]
) -> None:
    guard_installed(InMemoryNonceGuard)
    outcome = run(checks.replay_refused, live.options())
    assert outcome.status is Status.FAIL, outcome
    assert outcome.summary == (
        "the agent's guard accepted a command replayed after a guard restart"
    )


def test_ag06_a_guard_ignoring_the_clock_fails(
    live: Deployment, guard_installed: Callable[[Any], None]
) -> None:
    guard_installed(ClockBlindGuard)
    outcome = run(checks.replay_refused, live.options())
    assert outcome.status is Status.FAIL, outcome
    assert outcome.summary == "the agent's guard accepted an expired command"


def test_ag06_a_control_plane_recording_a_replayed_result_fails(
    live: Deployment, guard_installed: Callable[[Any], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    guard_installed(CommandGuard)
    commands = live.services.commands

    def complete_anything(
        agent_id: str, command_id: str, *, status: str, output: Any, error: Any, **_: Any
    ) -> None:
        # No "must still be sent" guard: the last result wins.
        with live.services.db.transaction() as tx:
            tx.execute(
                "UPDATE agent_commands SET status = :s, output = :o, error = :e WHERE id = :id",
                {
                    "s": status,
                    "o": json.dumps(output) if output is not None else None,
                    "e": error,
                    "id": command_id,
                },
            )

    monkeypatch.setattr(commands, "complete", complete_anything)
    outcome = run(checks.replay_refused, live.options())
    assert outcome.status is Status.FAIL, outcome
    assert outcome.summary == (
        "the gateway recorded a replayed result (status now failed, error 'AG-06 replayed result')"
    )


def test_ag06_without_the_guard_installed_is_an_error(
    live: Deployment, guard_installed: Callable[[Any], None]
) -> None:
    guard_installed(None)
    outcome = run(checks.replay_refused, live.options())
    assert outcome.status is Status.ERROR, outcome
    assert "no command guard is installed" in outcome.summary
    assert "agent_guard" not in outcome.evidence


def test_ag06_is_skipped_without_the_local_control_plane(live: Deployment) -> None:
    spec = default_registry(load=False).get("AG-06")
    assert spec.fn is checks.replay_refused
    result = runner.run(live.options(local=False), checks=[spec]).by_id()["AG-06"]
    assert result.status is Status.SKIP
    assert result.summary == "host-local check: run on the panel host with --local"


def test_ag06_a_revoked_test_identity_is_an_error(live: Deployment, tmp_path: Path) -> None:
    from agentgatewayfixtures import enroll

    other = enroll(live.services, "web-revoked", tmp_path / "revoked", address="127.0.0.1")
    live.services.agents.revoke(SYSTEM, "web-revoked")
    outcome = run(checks.replay_refused, live.options(agent_cert=other.cert, agent_key=other.key))
    assert outcome.status is Status.ERROR
    assert outcome.summary.startswith("the test identity is not an active agent (revoked)")


# --- the runner, end to end over the section ------------------------------------------------------


def test_the_whole_section_passes_against_the_real_gateway(
    live: Deployment, guard_installed: Callable[[Any], None]
) -> None:
    guard_installed(CommandGuard)
    report = runner.run(live.options(sections=("agent",)))
    statuses = {r.id: r.status for r in report.results}
    assert statuses == {
        "AG-01": Status.PASS,
        "AG-02": Status.PASS,
        "AG-03": Status.PASS,
        "AG-04": Status.PASS,
        "AG-05": Status.PASS,
        "AG-06": Status.PASS,
    }, {r.id: r.summary for r in report.results}
    assert report.exit_code == 0
