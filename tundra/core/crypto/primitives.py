"""The one home of sensitive primitives: randomness, ids, comparison and secret files.

Nothing else in Tundra calls ``os.chmod`` on a key, opens a key file by hand or uses ``random``
for a secret. Secret files are written atomically (temporary file created with its final mode,
fsync, rename, fsync of the directory) and checked on load for type, mode and owner.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the operating system's CSPRNG (what ``secrets`` uses, without importing
    ``hmac`` and OpenSSL's hash bindings into every command that only needs an id)."""
    return os.urandom(n)


def new_id() -> str:
    """A fresh row id (128 random bits, hex). Generated before insert: it is part of the AAD."""
    return os.urandom(16).hex()


def constant_time_equal(a: bytes | str, b: bytes | str) -> bool:
    import hmac

    if isinstance(a, str):
        a = a.encode()
    if isinstance(b, str):
        b = b.encode()
    return hmac.compare_digest(a, b)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) with mode 0700; tighten it if it exists with a looser one."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        os.chmod(path, 0o700)


def write_secret_file(path: Path, data: bytes, *, mode: int = 0o400, replace: bool = False) -> None:
    """Write ``data`` to ``path`` atomically with ``mode``.

    Refuses to overwrite an existing file unless ``replace`` is set, so a key is never lost by
    accident. The temporary file is created with the final mode: the secret is never readable by
    anyone else, not even for an instant.
    """
    if path.exists() and not replace:
        raise FileExistsError(f"{path} exists; refusing to overwrite it")
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it; make it exact
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def install_file(source: Path, target: Path) -> None:
    """Atomically put ``source`` in place of ``target`` (both in one directory) and fsync."""
    os.replace(source, target)
    fsync_dir(target.parent)


@dataclass(frozen=True)
class FileProblem:
    """Something wrong with a secret file, with the fix an operator should apply."""

    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.problem} (fix: {self.fix})"


def inspect_secret_file(
    path: Path, *, mode: int = 0o400, uid: int | None = None
) -> list[FileProblem]:
    """Every reason ``path`` is not a safe secret file: symlink, not regular, mode, owner."""
    expected_uid = os.geteuid() if uid is None else uid
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return [
            FileProblem(f"{path} does not exist", "run `tundra init`, or restore it from backup")
        ]
    problems = []
    if stat.S_ISLNK(info.st_mode):
        return [
            FileProblem(f"{path} is a symbolic link", "replace the link with the key file itself")
        ]
    if not stat.S_ISREG(info.st_mode):
        return [FileProblem(f"{path} is not a regular file", "restore the key file from backup")]
    actual = stat.S_IMODE(info.st_mode)
    if actual != mode:
        problems.append(
            FileProblem(f"{path} has mode {actual:04o}, not {mode:04o}", f"chmod {mode:04o} {path}")
        )
    if info.st_uid != expected_uid:
        problems.append(
            FileProblem(
                f"{path} is owned by uid {info.st_uid}, not the service user (uid {expected_uid})",
                f"chown {expected_uid} {path}",
            )
        )
    return problems


def read_secret_file(path: Path, *, mode: int = 0o400, uid: int | None = None) -> bytes:
    """Read a secret file after :func:`inspect_secret_file` found nothing wrong.

    The checks run on the open descriptor too (``O_NOFOLLOW`` + ``fstat``), so a file swapped
    between the check and the read is still caught.
    """
    problems = inspect_secret_file(path, mode=mode, uid=uid)
    if problems:
        raise PermissionError("; ".join(str(p) for p in problems))
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        info = os.fstat(fd)
        expected_uid = os.geteuid() if uid is None else uid
        if stat.S_IMODE(info.st_mode) != mode or info.st_uid != expected_uid:
            raise PermissionError(f"{path} changed while it was being read")
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
