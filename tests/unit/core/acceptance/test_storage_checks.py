"""ST-01 … ST-04: every rule with a passing and a failing fixture.

Key files with each wrong mode, owner, trailer, a symlink and an ACL (a binary
``system.posix_acl_access`` value written with ``os.setxattr``: setfacl is not needed); a fake
``tundra serve`` process whose environment carries the key; a badly scored unit next to the
shipped ones; a world-readable database. Sub-cases that need root or a tool skip with the
reason, and fail under ``TUNDRA_REQUIRE_SERVICES=1`` (CI runs as root).
"""

from __future__ import annotations

import base64
import errno
import os
import pwd
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tundra.core.acceptance import runner
from tundra.core.acceptance.checks import storage
from tundra.core.acceptance.checks.storage import (
    LeakSource,
    UnitPolicy,
    find_leaks,
    find_units,
    inspect_data_dirs,
    inspect_master_key,
    score_units,
    unit_user,
)
from tundra.core.acceptance.context import RunOptions
from tundra.core.acceptance.model import Outcome, Result, Status
from tundra.core.acceptance.registry import default_registry
from tundra.core.crypto import masterkey
from tundra.core.services import Services

REQUIRE = os.environ.get("TUNDRA_REQUIRE_SERVICES") == "1"
SHIPPED_UNITS = Path(__file__).parents[4] / "deploy" / "systemd"


def unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"{reason}; TUNDRA_REQUIRE_SERVICES=1 makes this a failure", pytrace=False)
    pytest.skip(reason)


def need_root() -> None:
    if os.geteuid() != 0:
        unavailable("needs root (to change owners and switch users)")


def need_analyze() -> None:
    if shutil.which("systemd-analyze") is None:
        unavailable("systemd-analyze is not installed")


def run_check(check_id: str, services: Services) -> Result:
    spec = default_registry(load=False).get(check_id)
    options = RunOptions(url="https://127.0.0.1:8443", local=True, services=services)
    return runner.run(options, checks=[spec]).by_id()[check_id]


# --- ST-01: the key file ----------------------------------------------------------------------


@pytest.fixture
def key_dir() -> Iterator[Path]:
    """A private key directory that ``nobody`` may traverse (so only the file's mode guards it)."""
    path = Path(tempfile.mkdtemp(prefix="tundra-st01-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def key(key_dir: Path) -> tuple[Path, bytes]:
    raw = masterkey.new_key()
    path = key_dir / "master.key"
    masterkey.write_key_file(path, raw)
    return path, raw


def inspect(path: Path, raw: bytes, **kwargs: object) -> Outcome:
    options: dict[str, object] = {
        "service_uid": os.geteuid(),
        "kcv": masterkey.key_check_value(raw),
    }
    options.update(kwargs)
    return inspect_master_key(path, **options)


def test_a_correct_key_file_passes(key: tuple[Path, bytes]) -> None:
    outcome = inspect(*key)
    assert outcome.status is Status.PASS, outcome.summary
    assert outcome.evidence["file"]["mode"] == "0400"
    assert outcome.evidence["trailer"] == "ok"
    assert outcome.evidence["key_check_value"] == "matches"
    assert outcome.evidence["acl"] is None
    if os.geteuid() == 0:
        assert outcome.evidence["unprivileged_open"]["opened"] is False
    else:
        assert "not root" in outcome.evidence["unprivileged_open"]["skipped"]


@pytest.mark.parametrize("mode", [0o600, 0o440, 0o404, 0o444, 0o640, 0o644, 0o200, 0o000])
def test_every_other_mode_fails(key: tuple[Path, bytes], mode: int) -> None:
    path, raw = key
    path.chmod(mode)
    outcome = inspect(path, raw)
    assert outcome.status is Status.FAIL
    assert f"mode {mode:04o}, not 0400" in outcome.summary


def test_nobody_opening_the_key_is_reported(key: tuple[Path, bytes]) -> None:
    need_root()
    path, raw = key
    path.chmod(0o404)
    outcome = inspect(path, raw)
    assert outcome.evidence["unprivileged_open"]["opened"] is True
    assert "nobody" in outcome.summary and "can open it" in outcome.summary


def test_a_key_owned_by_another_user_fails(key: tuple[Path, bytes]) -> None:
    need_root()
    path, raw = key
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(path, nobody, -1)
    outcome = inspect(path, raw)
    assert outcome.status is Status.FAIL
    assert f"owned by nobody (uid {nobody}), not the service user" in outcome.summary
    # ... and the same file passes when nobody is declared the service user.
    assert inspect(path, raw, service_uid=nobody, probe_user=None).status is Status.PASS


def test_a_symlink_fails(key: tuple[Path, bytes]) -> None:
    path, raw = key
    real = path.with_name("real.key")
    path.rename(real)
    path.symlink_to(real)
    outcome = inspect(path, raw)
    assert outcome.status is Status.FAIL
    assert "symbolic link" in outcome.summary
    assert outcome.evidence["link_target"] == str(real)


def test_a_directory_in_place_of_the_key_fails(key_dir: Path) -> None:
    (key_dir / "master.key").mkdir()
    outcome = inspect(key_dir / "master.key", b"x" * 32)
    assert outcome.status is Status.FAIL
    assert "not a regular file" in outcome.summary


def test_a_missing_key_fails(key_dir: Path) -> None:
    outcome = inspect(key_dir / "master.key", b"x" * 32)
    assert outcome.status is Status.FAIL
    assert "does not exist" in outcome.summary


def _rewrite(path: Path, data: bytes) -> None:
    path.chmod(0o600)
    path.write_bytes(data)
    path.chmod(0o400)


def test_a_corrupt_trailer_fails(key: tuple[Path, bytes]) -> None:
    path, raw = key
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    _rewrite(path, bytes(data))
    outcome = inspect(path, raw)
    assert outcome.status is Status.FAIL
    assert "BLAKE3 trailer does not match" in outcome.summary
    assert outcome.evidence["trailer"] == "mismatch"


def test_a_truncated_key_fails(key: tuple[Path, bytes]) -> None:
    path, raw = key
    _rewrite(path, path.read_bytes()[:63])
    outcome = inspect(path, raw)
    assert outcome.status is Status.FAIL
    assert "63 bytes, not 64" in outcome.summary


def test_a_valid_but_different_key_fails(key: tuple[Path, bytes]) -> None:
    path, _ = key
    other = masterkey.new_key()
    outcome = inspect(path, other)  # the database's kcv is another key's
    assert outcome.status is Status.FAIL
    assert "key-check value mismatch" in outcome.summary
    missing = inspect(path, other, kcv=None)
    assert missing.status is Status.FAIL
    assert "no key-check value" in missing.summary


def _acl(*entries: tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def test_an_acl_fails_even_when_the_mode_is_0400(key: tuple[Path, bytes]) -> None:
    path, raw = key
    nobody = pwd.getpwnam("nobody").pw_uid
    undefined = 0xFFFFFFFF
    acl = _acl(
        (0x01, 4, undefined),  # user::r--
        (0x02, 4, nobody),  # user:nobody:r--
        (0x04, 0, undefined),  # group::---
        (0x10, 4, undefined),  # mask::r--
        (0x20, 0, undefined),  # other::---
    )
    try:
        os.setxattr(path, storage.ACL_XATTR, acl)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            unavailable(f"this filesystem has no POSIX ACLs ({exc})")
        raise
    path.chmod(0o400)  # sets the mask to ---: the mode alone now looks right
    outcome = inspect(path, raw)
    assert outcome.status is Status.FAIL
    assert outcome.summary.endswith(
        "has an ACL: user_obj:r--, user:r--, group_obj:---, mask:---, other:---"
    ), outcome.summary
    assert {"tag": "user", "perm": "r--", "id": nobody} in outcome.evidence["acl"]


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o722])
def test_a_writable_parent_directory_fails(key: tuple[Path, bytes], mode: int) -> None:
    path, raw = key
    path.parent.chmod(mode)
    outcome = inspect(path, raw, probe_user=None)
    assert outcome.status is Status.FAIL
    assert "is group/world-writable" in outcome.summary


def test_leftover_rotation_files_readable_by_others_fail(key: tuple[Path, bytes]) -> None:
    path, raw = key
    leftover = masterkey.KeyPaths(path).prev
    leftover.write_bytes(path.read_bytes())
    leftover.chmod(0o644)
    outcome = inspect(path, raw, probe_user=None)
    assert outcome.status is Status.FAIL
    assert "leftover master.key.prev" in outcome.summary
    leftover.chmod(0o400)
    assert inspect(path, raw, probe_user=None).status is Status.PASS


def test_st01_through_the_runner(services: Services) -> None:
    result = run_check("ST-01", services)
    assert result.status is Status.PASS, result.summary
    assert result.evidence["service_user"]["source"] == "owner of $TUNDRA_HOME"
    services.settings.master_key_path.chmod(0o644)
    result = run_check("ST-01", services)
    assert result.status is Status.FAIL
    assert "mode 0644, not 0400" in result.summary


# --- ST-02: leaks -----------------------------------------------------------------------------


def test_every_encoding_of_the_key_is_found(tmp_path: Path) -> None:
    data = masterkey.encode(masterkey.new_key())
    key = data[:32]
    encodings = {
        "hex": key.hex().encode(),
        "HEX": key.hex().upper().encode(),
        "base64": base64.b64encode(key),
        "base64url": base64.urlsafe_b64encode(key).rstrip(b"="),
        "base32": base64.b32encode(key),
        "raw": key,
        "file hex": data.hex().encode(),
    }
    for name, encoded in encodings.items():
        report = find_leaks(data, [LeakSource("log", name, data=b"before " + encoded + b" after")])
        assert report.leaks, name
        # The report never carries key material, only the name of the form found.
        assert encoded not in repr(report.searched).encode()
    clean = find_leaks(data, [LeakSource("log", "clean", data=b"nothing " * 1000)])
    assert clean.leaks == []


def test_a_world_readable_config_with_a_url_password_leaks(tmp_path: Path) -> None:
    data = masterkey.encode(masterkey.new_key())
    config = tmp_path / "tundra.toml"
    config.write_text('database_url = "postgresql://tundra:s3cret@127.0.0.1/tundra"\n')
    config.chmod(0o644)
    report = find_leaks(data, [LeakSource("config", str(config), config, config=True)])
    assert report.leaks == [f"world-readable {config} has a password in a URL"]
    config.chmod(0o600)
    report = find_leaks(data, [LeakSource("config", str(config), config, config=True)])
    assert report.leaks == []


def test_st02_passes_on_a_clean_home_and_fails_on_a_leaking_log(services: Services) -> None:
    result = run_check("ST-02", services)
    assert result.status is Status.PASS, result.summary
    names = {entry["name"] for entry in result.evidence["searched"]}
    assert str(services.settings.sqlite_path) in names or services.settings.database_url
    key = services.settings.master_key_path.read_bytes()[:32]
    log = services.settings.home / "logs" / "serve.log"
    log.parent.mkdir()
    log.write_text(f"debug: loaded key {base64.b64encode(key).decode()}\n")
    result = run_check("ST-02", services)
    assert result.status is Status.FAIL
    assert f"log {log} contains the master key (key (base64))" in result.summary


@pytest.fixture
def fake_serve(services: Services) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a process that looks like `tundra serve` of this home, with extra environment."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**extra: str) -> subprocess.Popen[bytes]:
        env = {"PATH": "/usr/bin:/bin", "TUNDRA_HOME": str(services.settings.home), **extra}
        argv = [sys.executable, "-c", "import time; time.sleep(60)", "tundra", "serve"]
        process = subprocess.Popen(argv, env=env)
        started.append(process)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # until /proc shows the final command line
            found = storage.serve_processes()
            if any(p.pid == process.pid for p in found):
                break
            time.sleep(0.02)
        return process

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)


def test_st02_finds_the_key_in_the_serve_environment(
    services: Services, fake_serve: Callable[..., subprocess.Popen[bytes]]
) -> None:
    clean = fake_serve(TUNDRA_LOG_LEVEL="info")
    result = run_check("ST-02", services)
    assert result.status is Status.PASS, result.summary
    assert [p["pid"] for p in result.evidence["serve_processes"]] == [clean.pid]
    clean.terminate()
    clean.wait(timeout=10)
    hex_key = services.settings.master_key_path.read_bytes()[:32].hex()
    leaking = fake_serve(TUNDRA_MASTER_KEY=hex_key)
    result = run_check("ST-02", services)
    assert result.status is Status.FAIL
    assert (
        f"process environ tundra serve[{leaking.pid}] environ contains the master key (key (hex))"
        in result.summary
    )
    assert hex_key not in str(result.evidence)


def test_serve_processes_of_other_homes_are_ignored(
    services: Services, fake_serve: Callable[..., subprocess.Popen[bytes]]
) -> None:
    other = fake_serve(TUNDRA_HOME="/nonexistent/other-home")
    result = run_check("ST-02", services)
    assert other.pid not in [p["pid"] for p in result.evidence["serve_processes"]]


# --- ST-03: units -----------------------------------------------------------------------------

BARE_UNIT = "[Unit]\nDescription=bare\n\n[Service]\nExecStart=/usr/local/bin/tundra serve\n"


def test_the_shipped_units_pass() -> None:
    need_analyze()
    units = sorted(SHIPPED_UNITS.glob("*.service"))
    if not units:
        unavailable("deploy/systemd has no unit yet")
    outcome = score_units(units)
    assert outcome.status is Status.PASS, outcome.summary
    for entry in outcome.evidence["units"]:
        assert entry["exposure"] <= entry["max_exposure"]


def test_a_bare_unit_scores_badly_and_runs_as_root(tmp_path: Path) -> None:
    need_analyze()
    unit = tmp_path / "tundra.service"
    unit.write_text(BARE_UNIT)
    outcome = score_units([unit])
    assert outcome.status is Status.FAIL
    assert "tundra.service exposure 9.6 > 3.0" in outcome.summary
    assert "tundra.service runs as root" in outcome.summary
    assert outcome.evidence["units"][0]["worst"]


def test_a_hardened_unit_running_as_root_fails_unless_the_policy_allows(tmp_path: Path) -> None:
    need_analyze()
    shipped = (SHIPPED_UNITS / "tundra.service").read_text()
    unit = tmp_path / "tundra-thing.service"
    unit.write_text(shipped.replace("User=tundra\n", "").replace("Group=tundra\n", ""))
    outcome = score_units([unit])
    assert outcome.status is Status.FAIL
    assert "tundra-thing.service runs as root" in outcome.summary
    allowed = {"tundra-thing.service": UnitPolicy(10.0, True, "test: root needed")}
    assert score_units([unit], policies=allowed).status is Status.PASS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BARE_UNIT, (None, False)),
        ("[Service]\nUser=tundra\n", ("tundra", False)),
        ("[Service]\nUser=tundra\nUser=root\n", ("root", False)),
        ("[Service]\nDynamicUser=yes\n", (None, True)),
        ("[Unit]\nUser=tundra\n[Service]\nExecStart=/x\n", (None, False)),
        ("[Service]\n# User=tundra\n", (None, False)),
    ],
)
def test_unit_user(text: str, expected: tuple[str | None, bool]) -> None:
    assert unit_user(text) == expected


def test_find_units_takes_shipped_and_installed(tmp_path: Path) -> None:
    shipped, system = tmp_path / "deploy", tmp_path / "system"
    shipped.mkdir()
    system.mkdir()
    (shipped / "tundra.service").write_text(BARE_UNIT)
    (system / "tundra-agent.service").write_text(BARE_UNIT)
    (system / "nginx.service").write_text(BARE_UNIT)
    found = find_units(shipped=shipped, system_dirs=[system])
    assert found == [shipped / "tundra.service", system / "tundra-agent.service"]


def test_st03_through_the_runner_scores_the_shipped_units(services: Services) -> None:
    need_analyze()
    result = run_check("ST-03", services)
    if not SHIPPED_UNITS.is_dir():
        assert result.status is Status.SKIP
        return
    assert result.status is Status.PASS, result.summary
    assert {Path(u["unit"]).name for u in result.evidence["units"]} >= {"tundra.service"}


# --- ST-04: data directories ------------------------------------------------------------------


def test_a_fresh_home_passes_and_a_world_readable_database_fails(services: Services) -> None:
    result = run_check("ST-04", services)
    assert result.status is Status.PASS, result.summary
    if services.settings.database_url:
        # PostgreSQL's own data directory was looked at too (the test user is a superuser).
        assert result.evidence["postgresql_data_directory"]
    target = (
        services.settings.sqlite_path
        if not services.settings.database_url
        else services.settings.home / "tls" / "panel.key"
    )
    target.chmod(0o644)
    result = run_check("ST-04", services)
    assert result.status is Status.FAIL
    assert f"{target} (0644) is world-readable" in result.summary


@pytest.mark.parametrize(
    ("relative", "mode", "problem"),
    [
        ("", 0o755, "(directory, 0755) is open to every user"),
        ("", 0o770, "(directory, 0770) is group-writable"),
        ("tundra.db", 0o604, "(0604) is world-readable"),
        ("kv.db", 0o644, "(0644) is world-readable"),
        ("tundra.toml", 0o664, "(0664) is world-readable"),
        ("checkpoints", 0o751, "(directory, 0751) is open to every user"),
        ("checkpoints/1.note", 0o666, "(0666) is group/world-writable"),  # public, not writable
        ("tls/panel.key", 0o620, "(0620) is group/world-writable"),
    ],
)
def test_each_loose_path_is_named(tmp_path: Path, relative: str, mode: int, problem: str) -> None:
    home = tmp_path / "home"
    (home / "checkpoints").mkdir(parents=True)
    (home / "tls").mkdir()
    for name in ("tundra.db", "kv.db", "tundra.toml", "checkpoints/1.note", "tls/panel.key"):
        (home / name).write_text("x")
        (home / name).chmod(0o600)
    for directory in (home, home / "checkpoints", home / "tls"):
        directory.chmod(0o700)
    (home / "tls" / "ca.crt").write_text("public")
    (home / "tls" / "ca.crt").chmod(0o644)  # certificates may be world-readable
    assert inspect_data_dirs(home)[0] == []
    (home / relative).chmod(mode)
    problems, _ = inspect_data_dirs(home)
    assert problems == [f"{home / relative if relative else home} {problem}"]
