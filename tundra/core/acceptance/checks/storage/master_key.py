"""ST-01: the master key file (mode, owner, ACL, its directory, leftovers, an open by an
unprivileged user, trailer and key-check value) and :func:`read_key_bytes`, which ST-02 uses
too.

Decision (to be repeated in docs/acceptance.md):

- **The unprivileged probe** runs ``/bin/sh`` as ``nobody`` (``subprocess`` drops the groups, gid
  and uid between fork and exec, which is safe in a threaded runner) and lets the shell
  ``open()`` the key: a real open, so ACLs and every directory on the path count. Only root can
  switch users; otherwise that sub-probe is skipped with the reason in the evidence.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
import struct
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tundra.core.acceptance.checks.storage.service import _user_name, service_user
from tundra.core.acceptance.model import Outcome, Section, Severity, errored, failed, passed
from tundra.core.acceptance.registry import check
from tundra.core.crypto import masterkey
from tundra.core.errors import KeyMaterialError

if TYPE_CHECKING:
    from tundra.core.acceptance.context import RunContext

ACL_XATTR: Final = "system.posix_acl_access"
PROBE_USER: Final = "nobody"

_ACL_TAGS: Final = {0x01: "user_obj", 0x02: "user", 0x04: "group_obj", 0x08: "group"}
_ACL_TAGS_MORE: Final = {0x10: "mask", 0x20: "other"}


def parse_acl(data: bytes) -> list[dict[str, Any]]:
    """Entries of a binary ``system.posix_acl_access`` value (version 2, 8 bytes per entry)."""
    entries = []
    for offset in range(4, len(data) - 7, 8):
        tag, perm, ident = struct.unpack_from("<HHI", data, offset)
        name = _ACL_TAGS.get(tag) or _ACL_TAGS_MORE.get(tag) or hex(tag)
        perms = "".join(c if perm & bit else "-" for c, bit in (("r", 4), ("w", 2), ("x", 1)))
        entry: dict[str, Any] = {"tag": name, "perm": perms}
        if tag in (0x02, 0x08):
            entry["id"] = ident
        entries.append(entry)
    return entries


def read_acl(path: Path) -> list[dict[str, Any]] | None:
    """The extended ACL of ``path`` (None: it has none, or the filesystem has no ACLs)."""
    try:
        data = os.getxattr(path, ACL_XATTR, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise
    return parse_acl(data)


def open_as(path: Path, user: pwd.struct_passwd, *, timeout: float = 5.0) -> tuple[bool, str]:
    """Whether ``user`` (no supplementary groups) can open ``path`` for reading, and why not."""
    done = subprocess.run(
        ["/bin/sh", "-c", 'exec 3< "$1"', "sh", str(path)],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode == 0, done.stderr.strip().splitlines()[-1] if done.stderr else ""


def inspect_master_key(
    path: Path,
    *,
    service_uid: int,
    kcv: str | None,
    probe_user: str | None = PROBE_USER,
) -> Outcome:
    """ST-01's rules for one key file. ``kcv``: the database's key-check value."""
    problems: list[str] = []
    unknown: list[str] = []
    evidence: dict[str, Any] = {"path": str(path), "service_uid": service_uid}
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return failed(f"{path} does not exist", **evidence)
    evidence["file"] = {
        "type": _file_type(info.st_mode),
        "mode": f"{stat.S_IMODE(info.st_mode):04o}",
        "uid": info.st_uid,
        "owner": _user_name(info.st_uid),
        "size": info.st_size,
    }
    if stat.S_ISLNK(info.st_mode):
        evidence["link_target"] = os.readlink(path)
        return failed(f"{path} is a symbolic link", **evidence)
    if not stat.S_ISREG(info.st_mode):
        return failed(f"{path} is not a regular file", **evidence)
    mode = stat.S_IMODE(info.st_mode)
    if mode != masterkey.MODE:
        problems.append(f"mode {mode:04o}, not {masterkey.MODE:04o}")
    if info.st_uid != service_uid:
        problems.append(
            f"owned by {_user_name(info.st_uid)} (uid {info.st_uid}), not the service user "
            f"{_user_name(service_uid)} (uid {service_uid})"
        )
    acl = read_acl(path)
    evidence["acl"] = acl
    if acl:
        problems.append("has an ACL: " + ", ".join(f"{e['tag']}:{e['perm']}" for e in acl))
    parent = os.stat(path.parent)
    parent_mode = stat.S_IMODE(parent.st_mode)
    evidence["parent"] = {
        "path": str(path.parent),
        "mode": f"{parent_mode:04o}",
        "uid": parent.st_uid,
    }
    if parent_mode & 0o022:
        problems.append(f"its directory {path.parent} is group/world-writable ({parent_mode:04o})")
    if parent.st_uid not in (service_uid, 0):
        problems.append(f"its directory is owned by uid {parent.st_uid}, who can replace the key")
    evidence["unprivileged_open"] = _probe_open(path, service_uid, probe_user, problems)
    evidence["leftovers"] = _leftovers(path, problems)
    _verify_contents(path, kcv, evidence, problems, unknown)
    evidence["problems"] = problems
    if problems:
        return failed(f"{path}: " + "; ".join(problems), **evidence)
    if unknown:
        return errored("could not verify: " + "; ".join(unknown), **evidence)
    return passed(
        f"{path}: regular file, 0400, owned by the service user, no ACL, trailer and key-check "
        "value verify",
        **evidence,
    )


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "symlink"), (stat.S_ISREG, "file"), (stat.S_ISDIR, "dir")):
        if test(mode):
            return name
    return "other"


def _probe_open(
    path: Path, service_uid: int, probe_user: str | None, problems: list[str]
) -> dict[str, Any]:
    if probe_user is None:
        return {"skipped": "no probe user given"}
    if os.geteuid() != 0:
        return {"skipped": "the runner is not root, so it cannot switch to an unprivileged user"}
    try:
        user = pwd.getpwnam(probe_user)
    except KeyError:
        return {"skipped": f"no user {probe_user!r} on this host"}
    if user.pw_uid in (service_uid, 0):
        return {"skipped": f"{probe_user} is the service user or root"}
    opened, error = open_as(path, user)
    if opened:
        problems.append(f"{probe_user} (uid {user.pw_uid}) can open it")
    return {"user": probe_user, "uid": user.pw_uid, "opened": opened, "error": error}


def _leftovers(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    found = []
    for extra in masterkey.KeyPaths(path).leftovers():
        info = os.lstat(extra)
        mode = stat.S_IMODE(info.st_mode)
        found.append({"path": str(extra), "mode": f"{mode:04o}", "uid": info.st_uid})
        if mode & 0o077 or stat.S_ISLNK(info.st_mode):
            problems.append(f"leftover {extra.name} is a link or readable by others ({mode:04o})")
    return found


def _verify_contents(
    path: Path, kcv: str | None, evidence: dict[str, Any], problems: list[str], unknown: list[str]
) -> None:
    try:
        data = read_key_bytes(path)
    except PermissionError as exc:
        unknown.append(f"cannot read the key ({exc.strerror}): run as root or the service user")
        return
    try:
        key = masterkey.decode(data, path)
    except KeyMaterialError as exc:
        evidence["trailer"] = "mismatch"
        problems.append(exc.message)
        return
    evidence["trailer"] = "ok"
    if kcv is None:
        evidence["key_check_value"] = "missing in the database"
        problems.append("the database has no key-check value")
    elif masterkey.kcv_matches(key, kcv):
        evidence["key_check_value"] = "matches"
    else:
        evidence["key_check_value"] = "mismatch"
        problems.append("a valid key, but not this database's (key-check value mismatch)")


def read_key_bytes(path: Path) -> bytes:
    """The raw bytes of a key file, never through a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        chunks = []
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


@check(
    "ST-01",
    "Master key: 0400, service user's, no ACL, unreadable to others, trailer and KCV verify",
    section=Section.STORAGE,
    severity=Severity.CRITICAL,
    needs=("services",),
)
def master_key_file(ctx: RunContext) -> Outcome:
    services = ctx.services
    try:
        user = service_user(ctx)
    except KeyError as exc:
        return errored(f"unknown service user {exc}", hint="give a user name or uid that exists")
    outcome = inspect_master_key(
        services.settings.master_key_path, service_uid=user.uid, kcv=services.keys.fetch_kcv()
    )
    outcome.evidence["service_user"] = user.evidence()
    return outcome
