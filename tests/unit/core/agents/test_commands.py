"""The command queue on both databases: issue, claim (at most once), expire, complete, run."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from agenthelpers import add_agent, add_server, audit_rows, revoke_agent, token

from tundra.core.agents import commands as commands_module
from tundra.core.agents.commands import MAX_OUTPUT_BYTES, CommandRecord, QueuedCommand
from tundra.core.agents.envelope import verify_command
from tundra.core.audit.actions import Action
from tundra.core.errors import (
    AgentRefused,
    CommandRefused,
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
)
from tundra.core.principal import SYSTEM, cli_principal
from tundra.core.services import Services, build_services
from tundra.core.uow import unit_of_work

ME = cli_principal()


def _row(services: Services, command_id: str) -> dict[str, Any]:
    with services.db.read() as tx:
        row = tx.fetchone("SELECT * FROM agent_commands WHERE id = :id", {"id": command_id})
    assert row is not None
    return row


def _expire_now(services: Services, command_id: str) -> None:
    with unit_of_work(services.db, SYSTEM) as uow:
        uow.execute(
            "UPDATE agent_commands SET expires_at = '2000-01-01T00:00:00.000000Z' WHERE id = :id",
            {"id": command_id},
        )
        uow.record("test:command:age", f"command:{command_id}", {})


def _count(services: Services) -> int:
    with services.db.read() as tx:
        return int(tx.fetchval("SELECT count(*) FROM agent_commands"))


# -- issue ---------------------------------------------------------------------------------------


def test_issue_queues_a_signed_command_and_audits_it(services: Services) -> None:
    agent = add_agent(services, "web-1")
    record = services.commands.issue(
        ME, "web-1", "service.status", {"unit": "nginx"}, request_id="req-cmd-1"
    )
    assert (record.status, record.agent_id, record.server_name) == ("queued", agent, "web-1")
    assert record.payload == {"unit": "nginx.service"}
    assert (record.issued_by, record.request_id) == (ME.actor, "req-cmd-1")
    assert record.output is None and record.round_trip_ms is None and not record.finished
    assert record.created_at < record.expires_at
    row = _row(services, record.id)
    assert row["status"] == "queued"
    # The stored envelope is signed and verifies for exactly that agent.
    command = verify_command(
        bytes(row["envelope"]),
        bytes(row["signature"]),
        row["key_id"],
        public_keys=dict(services.command_signer.public_keys()),
        agent_id=agent,
        now_ms=int(time.time() * 1000),
    )
    assert (command.command_id, command.type, dict(command.payload)) == (
        record.id,
        "service.status",
        {"unit": "nginx.service"},
    )
    assert command.ttl_ms == services.settings.command_ttl_seconds * 1000
    issued = audit_rows(services, Action.COMMAND_ISSUE)
    assert len(issued) == 1
    assert issued[0]["resource"] == "server:web-1"
    assert issued[0]["request_id"] == "req-cmd-1"
    assert issued[0]["actor"] == ME.actor
    assert issued[0]["details"]["command_id"] == record.id
    assert issued[0]["details"]["payload"] == {"unit": "nginx.service"}
    assert services.commands.get(ME, record.id) == record


def test_issue_refusals_name_the_problem(services: Services) -> None:
    add_server(services, "bare")
    old = add_agent(services, "gone")
    revoke_agent(services, old)
    add_agent(services, "web-1")
    with pytest.raises(NotFound, match="no server named 'web-9'"):
        services.commands.issue(ME, "web-9", "ping")
    with pytest.raises(Conflict, match="'bare' has no enrolled agent") as caught:
        services.commands.issue(ME, "bare", "ping")
    assert "tundra server token bare" in (caught.value.hint or "")
    with pytest.raises(Conflict, match="no enrolled agent"):
        services.commands.issue(ME, "gone", "ping")
    with pytest.raises(InvalidInput, match="unknown command type 'shell'"):
        services.commands.issue(ME, "web-1", "shell", {"cmd": "id"})
    with pytest.raises(InvalidInput, match="unit name"):
        services.commands.issue(ME, "web-1", "service.status", {"unit": "../../bin/sh"})
    assert _count(services) == 0
    assert audit_rows(services, Action.COMMAND_ISSUE) == []


def test_issue_picks_the_active_agent_after_a_reenrolment(services: Services) -> None:
    first = add_agent(services, "web-1")
    revoke_agent(services, first)
    second = add_agent(services, "web-1")
    assert services.commands.issue(ME, "web-1", "ping").agent_id == second


def test_an_agent_revoked_while_signing_gets_no_command(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = add_agent(services, "web-1")
    original = services.command_signer.sign

    def sign_then_revoke(envelope: bytes) -> tuple[bytes, str]:
        result = original(envelope)
        revoke_agent(services, agent)
        return result

    monkeypatch.setattr(services.command_signer, "sign", sign_then_revoke)
    with pytest.raises(Conflict, match="revoked"):
        services.commands.issue(ME, "web-1", "ping")
    assert _count(services) == 0


def test_tokens_need_servers_write_on_that_server(services: Services) -> None:
    add_agent(services, "web-1")
    add_agent(services, "web-2")
    with pytest.raises(PermissionDenied, match="servers:write"):
        services.commands.issue(token("servers:read"), "web-1", "ping", request_id="req-t1")
    with pytest.raises(PermissionDenied, match="web-1"):
        services.commands.issue(token("servers:write", servers=("web-2",)), "web-1", "ping")
    assert _count(services) == 0
    denied = audit_rows(services, Action.TOKEN_DENIED)
    assert [(r["resource"], r["details"]["reason"]) for r in denied] == [
        ("server:web-1", "scope"),
        ("server:web-1", "resource"),
    ]
    assert denied[0]["request_id"] == "req-t1"
    # The same token may act on the server it is restricted to, and read it back.
    record = services.commands.issue(token("servers:write", servers=("web-2",)), "web-2", "ping")
    assert record.issued_by == "token:tnd_live_AAAAAAAA"
    assert services.commands.get(token("servers:read", servers=("web-2",)), record.id) == record
    # ...but a token restricted elsewhere cannot read its result.
    with pytest.raises(PermissionDenied):
        services.commands.get(token("servers:read", servers=("web-1",)), record.id)
    assert services.commands.get(token("admin"), record.id).id == record.id


def test_get_an_unknown_command(services: Services) -> None:
    with pytest.raises(NotFound, match="no command"):
        services.commands.get(ME, "0" * 32)


# -- claim ---------------------------------------------------------------------------------------


def test_claim_delivers_only_the_asked_agents_commands_once(services: Services) -> None:
    a = add_agent(services, "web-1")
    b = add_agent(services, "web-2")
    for_a = services.commands.issue(ME, "web-1", "ping")
    for_b = services.commands.issue(ME, "web-2", "facts")

    claimed = services.commands.claim({a})

    assert [c.id for c in claimed] == [for_a.id]
    item = claimed[0]
    assert isinstance(item, QueuedCommand)
    row = _row(services, for_a.id)
    assert (item.agent_id, item.envelope, item.signature, item.key_id) == (
        a,
        bytes(row["envelope"]),
        bytes(row["signature"]),
        row["key_id"],
    )
    assert row["status"] == "sent" and row["sent_at"] is not None
    assert services.commands.claim({a}) == []  # never twice
    assert _row(services, for_b.id)["status"] == "queued"
    assert [c.id for c in services.commands.claim([a, b])] == [for_b.id]
    assert services.commands.claim([]) == []


def test_claim_with_nothing_queued_writes_nothing(services: Services) -> None:
    a = add_agent(services, "web-1")
    with services.db.read() as tx:
        seq = tx.fetchval("SELECT max(seq) FROM audit_log")
    assert services.commands.claim({a}) == []
    with services.db.read() as tx:
        assert tx.fetchval("SELECT max(seq) FROM audit_log") == seq


@pytest.mark.parametrize("database_url", [""], ids=["sqlite"])
def test_the_poll_query_uses_the_status_index(services: Services) -> None:
    with services.db.read() as tx:
        plan = tx.fetchall("EXPLAIN QUERY PLAN " + commands_module.CLAIM_SQL, {"n": 10})
    steps = " | ".join(str(row["detail"]) for row in plan)
    assert "agent_commands_status (status=?)" in steps, steps


def test_claim_honours_the_limit_oldest_first(services: Services) -> None:
    a = add_agent(services, "web-1")
    issued = [services.commands.issue(ME, "web-1", "ping").id for _ in range(5)]
    batches = [[c.id for c in services.commands.claim({a}, limit=2)] for _ in range(4)]
    assert batches == [issued[0:2], issued[2:4], issued[4:5], []]


def test_expired_commands_are_never_sent_and_are_audited(services: Services) -> None:
    a = add_agent(services, "web-1")
    add_agent(services, "db-1")  # not connected here: its stale command expires all the same
    stale = services.commands.issue(ME, "web-1", "ping")
    orphan = services.commands.issue(ME, "db-1", "ping")
    fresh = services.commands.issue(ME, "web-1", "facts")
    _expire_now(services, stale.id)
    _expire_now(services, orphan.id)

    assert [c.id for c in services.commands.claim({a})] == [fresh.id]

    for command_id in (stale.id, orphan.id):
        record = services.commands.get(ME, command_id)
        assert record.status == "expired" and record.finished
        assert record.sent_at is None and record.finished_at is not None
        assert record.round_trip_ms is None
        assert "expired" in (record.error or "")
    expired = audit_rows(services, Action.COMMAND_EXPIRE)
    assert sorted(r["details"]["command_id"] for r in expired) == sorted([stale.id, orphan.id])
    assert {r["resource"] for r in expired} == {"server:web-1", "server:db-1"}
    assert {r["actor"] for r in expired} == {"system"}
    assert len({r["request_id"] for r in expired}) == 1  # one unit of work for the batch
    assert services.commands.claim({a}) == []
    assert len(audit_rows(services, Action.COMMAND_EXPIRE)) == 2


def test_sent_commands_never_answered_fail_after_expiry(services: Services) -> None:
    a = add_agent(services, "web-1")
    lost = services.commands.issue(ME, "web-1", "ping")
    live = services.commands.issue(ME, "web-1", "facts")
    assert {c.id for c in services.commands.claim({a})} == {lost.id, live.id}
    assert services.commands.fail_unanswered() == 0  # nothing is past its expiry yet
    _expire_now(services, lost.id)

    assert services.commands.fail_unanswered(grace_seconds=0) == 1
    record = services.commands.get(ME, lost.id)
    assert record.status == "failed" and record.finished
    assert "no result" in (record.error or "")
    assert services.commands.get(ME, live.id).status == "sent"
    rows = audit_rows(services, Action.COMMAND_EXPIRE)
    assert [r["details"]["command_id"] for r in rows] == [lost.id]
    assert rows[0]["details"]["unanswered"] is True
    assert services.commands.fail_unanswered(grace_seconds=0) == 0  # done once, not again
    with pytest.raises(AgentRefused):  # a late result cannot overwrite the verdict
        services.commands.complete(a, lost.id, status="succeeded", output={}, error=None)


def test_two_gateways_claiming_at_once_send_each_command_exactly_once(services: Services) -> None:
    agents = [add_agent(services, f"web-{i}") for i in range(3)]
    issued = {services.commands.issue(ME, f"web-{i % 3}", "ping").id for i in range(30)}
    gateways = [build_services(services.settings) for _ in range(2)]
    barrier = threading.Barrier(len(gateways))
    got: list[list[str]] = [[] for _ in gateways]
    errors: list[BaseException] = []

    def claimer(index: int) -> None:
        try:
            barrier.wait()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                batch = gateways[index].commands.claim(set(agents), limit=3)
                got[index].extend(c.id for c in batch)
                if not batch and sum(len(g) for g in got) >= len(issued):
                    return
        except BaseException as exc:
            errors.append(exc)
        finally:
            gateways[index].db.close_thread()

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(len(gateways))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        for gateway in gateways:
            gateway.close()
    assert errors == []
    delivered = got[0] + got[1]
    assert len(delivered) == len(set(delivered)) == len(issued)
    assert set(delivered) == issued


# -- complete ------------------------------------------------------------------------------------


def _sent(services: Services, server: str = "web-1", type_: str = "ping") -> tuple[str, str]:
    """(agent id, command id) of a command that was issued and claimed."""
    record = services.commands.issue(ME, server, type_)
    claimed = services.commands.claim({record.agent_id})
    assert [c.id for c in claimed] == [record.id]
    return record.agent_id, record.id


def test_complete_records_the_result_and_audits_it(services: Services) -> None:
    add_agent(services, "web-1")
    agent, command_id = _sent(services)

    services.commands.complete(
        agent,
        command_id,
        status="succeeded",
        output={"pong": True, "agent_time_ms": 5},
        error=None,
        request_id="req-done",
    )

    record = services.commands.get(ME, command_id)
    assert record.status == "succeeded" and record.finished
    assert record.output == {"pong": True, "agent_time_ms": 5}
    assert record.error is None
    assert record.round_trip_ms is not None and record.round_trip_ms >= 0
    assert json.loads(_row(services, command_id)["output"]) == {"pong": True, "agent_time_ms": 5}
    done = audit_rows(services, Action.COMMAND_COMPLETE)
    assert len(done) == 1
    assert done[0]["actor"] == f"agent:{agent}"
    assert done[0]["request_id"] == "req-done"
    assert done[0]["resource"] == "server:web-1"
    assert done[0]["details"]["status"] == "succeeded"
    as_dict = record.as_dict()
    assert as_dict["output"] == {"pong": True, "agent_time_ms": 5}
    assert as_dict["round_trip_ms"] == record.round_trip_ms
    json.dumps(as_dict)


def test_a_failure_and_a_refusal_are_recorded_with_their_reason(services: Services) -> None:
    add_agent(services, "web-1")
    agent, failed_id = _sent(services)
    _, refused_id = _sent(services)
    services.commands.complete(
        agent, failed_id, status="failed", output=None, error="systemd is not running on this host"
    )
    services.commands.complete(
        agent, refused_id, status="refused", output=None, error="replay: command was replayed"
    )
    failed = services.commands.get(ME, failed_id)
    assert (failed.status, failed.error, failed.output) == (
        "failed",
        "systemd is not running on this host",
        None,
    )
    assert services.commands.get(ME, refused_id).status == "refused"
    refusals = audit_rows(services, Action.COMMAND_REFUSED)
    assert [r["details"]["command_id"] for r in refusals] == [refused_id]
    assert refusals[0]["details"]["error"] == "replay: command was replayed"
    completes = audit_rows(services, Action.COMMAND_COMPLETE)
    assert [r["details"]["status"] for r in completes] == ["failed"]


def test_agent_a_can_never_complete_agent_b_s_command(services: Services) -> None:
    a = add_agent(services, "web-1")
    b = add_agent(services, "web-2")
    owner, command_id = _sent(services, "web-1")
    assert owner == a

    with pytest.raises(AgentRefused) as caught:
        services.commands.complete(
            b, command_id, status="succeeded", output={"pong": True}, error=None
        )

    assert caught.value.reason == "cross-agent"
    row = _row(services, command_id)
    assert (row["status"], row["output"], row["finished_at"]) == ("sent", None, None)
    cross = audit_rows(services, Action.COMMAND_CROSS_AGENT)
    assert len(cross) == 1
    assert cross[0]["actor"] == f"agent:{b}"
    assert cross[0]["resource"] == f"command:{command_id}"
    assert cross[0]["details"]["owner_agent_id"] == a
    # The rightful agent still can.
    services.commands.complete(a, command_id, status="succeeded", output={}, error=None)
    assert services.commands.get(ME, command_id).status == "succeeded"


def test_unknown_and_unsent_and_finished_commands_are_refused(services: Services) -> None:
    a = add_agent(services, "web-1")
    with pytest.raises(AgentRefused) as unknown:
        services.commands.complete(a, "0" * 32, status="succeeded", output={}, error=None)
    assert unknown.value.reason == "unknown-command"
    queued = services.commands.issue(ME, "web-1", "ping")
    with pytest.raises(AgentRefused) as not_sent:
        services.commands.complete(a, queued.id, status="succeeded", output={}, error=None)
    assert not_sent.value.reason == "not-sent"
    assert [c.id for c in services.commands.claim({a})] == [queued.id]
    command_id = queued.id
    services.commands.complete(a, command_id, status="succeeded", output={"n": 1}, error=None)
    with pytest.raises(AgentRefused) as twice:
        services.commands.complete(a, command_id, status="failed", output=None, error="late")
    assert twice.value.reason == "not-sent"
    assert services.commands.get(ME, command_id).output == {"n": 1}
    refused = audit_rows(services, Action.AGENT_REFUSED)
    assert [r["details"]["reason"] for r in refused] == ["unknown-command", "not-sent", "not-sent"]
    # An unknown id and another agent's id read the same to the agent.
    b = add_agent(services, "web-2")
    _, other = _sent(services, "web-2")
    with pytest.raises(AgentRefused) as foreign:
        services.commands.complete(a, other, status="succeeded", output={}, error=None)
    assert str(foreign.value).replace(other, "ID") == str(unknown.value).replace("0" * 32, "ID")
    assert b


def test_refusal_audit_rows_are_bounded_per_agent(services: Services) -> None:
    a = add_agent(services, "web-1")
    add_agent(services, "web-2")
    _, command_id = _sent(services, "web-2")
    limit = commands_module.REFUSAL_AUDITS_PER_MINUTE
    for _ in range(limit + 5):
        with pytest.raises(AgentRefused):
            services.commands.complete(a, command_id, status="succeeded", output={}, error=None)
    assert len(audit_rows(services, Action.COMMAND_CROSS_AGENT)) == limit


@pytest.mark.parametrize(
    ("output", "match"),
    [
        ({"blob": "x" * MAX_OUTPUT_BYTES}, f"more than the {MAX_OUTPUT_BYTES}-byte limit"),
        ({"bad": float("nan")}, "not valid JSON"),
        ({"bad": object()}, "not valid JSON"),
        (["not", "an", "object"], "not a JSON object"),
    ],
    ids=["too-big", "nan", "object", "list"],
)
def test_unusable_output_is_recorded_as_a_clear_failure(
    services: Services, output: Any, match: str
) -> None:
    add_agent(services, "web-1")
    agent, command_id = _sent(services)
    services.commands.complete(agent, command_id, status="succeeded", output=output, error=None)
    record = services.commands.get(ME, command_id)
    assert record.status == "failed" and record.output is None
    assert match in (record.error or "")


def test_output_just_under_the_cap_is_kept(services: Services) -> None:
    add_agent(services, "web-1")
    agent, command_id = _sent(services)
    output = {"blob": "x" * (MAX_OUTPUT_BYTES - len('{"blob":""}'))}
    services.commands.complete(agent, command_id, status="succeeded", output=output, error=None)
    assert services.commands.get(ME, command_id).output == output


def test_long_errors_are_truncated_and_missing_ones_explained(services: Services) -> None:
    add_agent(services, "web-1")
    agent, long_id = _sent(services)
    _, silent_id = _sent(services)
    services.commands.complete(agent, long_id, status="failed", output=None, error="e" * 10_000)
    services.commands.complete(agent, silent_id, status="failed", output=None, error=None)
    error = services.commands.get(ME, long_id).error or ""
    assert len(error) == commands_module.MAX_ERROR_CHARS and error.endswith("...")
    assert services.commands.get(ME, silent_id).error == "the agent gave no reason"


@pytest.mark.parametrize("status", ["queued", "sent", "expired", "", "SUCCEEDED"])
def test_complete_refuses_a_status_an_agent_cannot_report(services: Services, status: str) -> None:
    add_agent(services, "web-1")
    agent, command_id = _sent(services)
    with pytest.raises(InvalidInput, match="result status"):
        services.commands.complete(agent, command_id, status=status, output=None, error=None)
    assert _row(services, command_id)["status"] == "sent"


# -- run -----------------------------------------------------------------------------------------


def test_run_returns_once_a_gateway_thread_completes_the_command(services: Services) -> None:
    agent = add_agent(services, "web-1")
    gateway = build_services(services.settings)
    stop = threading.Event()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            while not stop.is_set():
                for item in gateway.commands.claim({agent}):
                    gateway.commands.complete(
                        item.agent_id,
                        item.id,
                        status="succeeded",
                        output={"pong": True, "agent_time_ms": 1},
                        error=None,
                    )
                time.sleep(0.005)
        except BaseException as exc:
            errors.append(exc)
        finally:
            gateway.db.close_thread()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        started = time.monotonic()
        record = services.commands.run(ME, "web-1", "ping", timeout=10)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        thread.join(10)
        gateway.close()
    assert errors == []
    assert isinstance(record, CommandRecord)
    assert record.status == "succeeded"
    assert record.output == {"pong": True, "agent_time_ms": 1}
    assert elapsed < 5


def test_run_gives_back_the_unfinished_record_after_the_timeout(services: Services) -> None:
    add_agent(services, "web-1")
    started = time.monotonic()
    record = services.commands.run(ME, "web-1", "ping", timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 3
    assert record.status == "queued" and not record.finished


def test_run_checks_permissions_before_queueing(services: Services) -> None:
    add_agent(services, "web-1")
    with pytest.raises(PermissionDenied):
        services.commands.run(token("servers:read"), "web-1", "ping", timeout=0.1)
    assert _count(services) == 0


def test_removing_the_server_removes_its_commands(services: Services) -> None:
    add_agent(services, "web-1")
    record = services.commands.issue(ME, "web-1", "ping")
    with unit_of_work(services.db, SYSTEM) as uow:
        uow.execute("DELETE FROM servers WHERE name = 'web-1'")
        uow.record("test:server:delete", "server:web-1", {})
    with pytest.raises(NotFound):
        services.commands.get(ME, record.id)
    assert _count(services) == 0


def test_a_claimed_command_passes_the_agent_guard_runs_and_completes(
    services: Services, tmp_path: Path
) -> None:
    """The whole path without the network: issue → claim → agent guard → execute → complete."""
    from tundra.agent.executors import execute
    from tundra.agent.guard import CommandGuard
    from tundra.agent.v1 import agent_pb2

    agent = add_agent(services, "web-1")
    record = services.commands.issue(ME, "web-1", "ping")
    [queued] = services.commands.claim({agent})
    signed = agent_pb2.SignedCommand(
        envelope=queued.envelope, signature=queued.signature, key_id=queued.key_id
    )
    keys = dict(services.command_signer.public_keys())
    with CommandGuard(agent_id=agent, state_dir=tmp_path / "a", public_keys=keys) as guard:
        command = guard.check(signed)
        output = execute(command)
        with pytest.raises(CommandRefused) as replay:
            guard.check(signed)
    assert replay.value.reason == "replay"
    assert command.command_id == record.id
    services.commands.complete(
        agent, command.command_id, status="succeeded", output=output, error=None
    )
    done = services.commands.get(ME, record.id)
    assert done.status == "succeeded"
    assert done.output is not None and done.output["pong"] is True
    # Another agent's guard refuses the same delivery outright.
    other = CommandGuard(agent_id="b" * 32, state_dir=tmp_path / "b", public_keys=keys)
    with other, pytest.raises(CommandRefused) as wrong:
        other.check(signed)
    assert wrong.value.reason == "audience"
