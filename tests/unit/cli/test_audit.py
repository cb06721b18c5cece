"""`tundra audit …` through the CLI boundary: output, files written, and exit codes."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from tundra.cli.app import cli
from tundra.cli.exit import ExitStatus
from tundra.core.principal import cli_principal
from tundra.core.uow import unit_of_work


@pytest.fixture
def env(services) -> dict[str, str]:
    for i in range(5):
        with unit_of_work(services.db, cli_principal()) as uow:
            uow.record("fleet:server:create", f"server:web-{i}", {"name": f"web-{i}"})
    s = services.settings
    return {"TUNDRA_HOME": str(s.home), "TUNDRA_DATABASE_URL": s.database_url,
            "TUNDRA_PASSWORD_PROFILE": "test"}


def run(env: dict[str, str], *args: str):
    return CliRunner().invoke(cli, list(args), env=env)


def test_list_json_and_table(services, env) -> None:
    result = run(env, "audit", "list", "--json", "--resource", "server:*", "--limit", "3")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["resource"] for r in rows] == ["server:web-4", "server:web-3", "server:web-2"]
    assert {"prev_hash", "chain_hash", "details"} <= set(rows[0])
    after = json.loads(run(env, "audit", "list", "--json", "--after", str(rows[0]["seq"] - 2)
                           ).stdout)
    assert [r["seq"] for r in after] == [rows[0]["seq"] - 1, rows[0]["seq"]]
    table = run(env, "audit", "list", "--action", "fleet:*")
    assert table.exit_code == 0
    assert "server:web-4" in table.stdout


def test_bad_time_is_a_usage_error(env) -> None:
    result = run(env, "audit", "list", "--since", "last tuesday")
    assert result.exit_code == ExitStatus.USAGE
    assert "ISO 8601" in result.stderr
    assert "Traceback" not in result.output


def test_export_to_stdout_and_to_a_private_file(services, env, tmp_path: Path) -> None:
    out = run(env, "audit", "export", "--format", "csv")
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines()[0] == ("seq,occurred_at,actor,action,resource,request_id,"
                                          "details,prev_hash,chain_hash")
    target = tmp_path / "audit.jsonl"
    written = run(env, "audit", "export", "--format", "jsonl", "--output", str(target))
    assert written.exit_code == 0, written.output
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert len(target.read_text().splitlines()) == services.audit.head()[0]
    assert not list(tmp_path.glob(".*partial"))
    verified = run(env, "audit", "verify", "--file", str(target))
    assert verified.exit_code == 0, verified.output


def test_verify_ok_then_broken_names_seq_and_reason(services, env) -> None:
    ok = run(env, "audit", "verify", "--json")
    assert ok.exit_code == 0
    assert json.loads(ok.stdout)["ok"] is True
    last = services.audit.head()[0]
    with services.db.transaction() as tx:
        tx.execute("UPDATE audit_log SET actor = 'user:mallory' WHERE seq = :s", {"s": last - 1})
    broken = run(env, "audit", "verify")
    assert broken.exit_code == ExitStatus.FAILURE == 1
    lines = broken.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"seq {last - 1}" in lines[0]
    assert "modified" in lines[0]
    as_json = run(env, "audit", "verify", "--json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["first_bad_seq"] == last - 1


def test_verify_a_truncated_file_is_a_data_error(env, tmp_path: Path) -> None:
    target = tmp_path / "audit.json"
    run(env, "audit", "export", "--format", "json", "--output", str(target))
    target.write_bytes(target.read_bytes()[:-40])
    result = run(env, "audit", "verify", "--file", str(target))
    assert result.exit_code == ExitStatus.DATA_ERROR
    assert "line" in result.stderr
    assert "Traceback" not in result.output


def test_checkpoint_and_verify_against_it(services, env, tmp_path: Path) -> None:
    note = tmp_path / "offsite.note"
    made = run(env, "audit", "checkpoint", "--output", str(note))
    assert made.exit_code == 0, made.output
    assert made.stdout.strip() == str(note)
    vkey = tmp_path / "offsite.vkey"
    vkey.write_text(services.settings.checkpoint_vkey_path.read_text())
    checked = run(env, "audit", "verify", "--checkpoint", str(note), "--vkey", str(vkey))
    assert checked.exit_code == 0, checked.output
    keep = services.audit.head()[0] - 2
    with services.db.transaction() as tx:
        tx.execute("DELETE FROM audit_log WHERE seq > :s", {"s": keep})
    cut = run(env, "audit", "verify", "--checkpoint", str(note), "--vkey", str(vkey))
    assert cut.exit_code == 1
    assert "truncated" in cut.stderr
    note.write_text(note.read_text().replace("\n\n", "\n"))
    bad = run(env, "audit", "verify", "--checkpoint", str(note))
    assert bad.exit_code == ExitStatus.DATA_ERROR


def test_default_checkpoint_goes_to_the_home(services, env) -> None:
    made = run(env, "audit", "checkpoint")
    assert made.exit_code == 0, made.output
    path = Path(made.stdout.strip())
    assert path.parent == services.settings.checkpoints_dir
    assert path.name == f"{services.audit.head()[0]}.note"
