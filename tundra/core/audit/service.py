"""The audit service: list, export, verify and checkpoint the chain.

Appending is not here: it happens in :mod:`tundra.core.uow`, in the transaction of the change.
This service reads the chain, proves it intact (or says where and how it is not), and signs
checkpoints with an Ed25519 key kept outside the database, so that someone who can write to the
database can still not cut the log short or recompute it unnoticed.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tundra.core.audit.chain import GENESIS, AuditRow
from tundra.core.audit.checkpoint import (
    Checkpoint,
    SignerKey,
    VerifierKey,
    generate_signer,
    parse_checkpoint,
    sign_checkpoint,
)
from tundra.core.audit.export import rows_between, seq_range, write_rows
from tundra.core.audit.verify import VerifyResult
from tundra.core.clock import to_iso
from tundra.core.crypto.primitives import make_private_dir, read_secret_file, write_secret_file
from tundra.core.errors import ConfigError, InvalidFile, InvalidInput

if TYPE_CHECKING:
    from tundra.core.principal import Principal
    from tundra.core.services import Services

VKEY_MODE = 0o644
NOTE_MODE = 0o644
MAX_LIMIT = 10_000
_COLUMNS = "seq, occurred_at, actor, action, resource, request_id, details, prev_hash, chain_hash"


def parse_time(value: str | datetime | date | None, *, name: str) -> str | None:
    """An ISO 8601 date or time as Tundra's fixed-width UTC text; naive times are UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    else:
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise InvalidInput(
                f"--{name} {value!r} is not an ISO 8601 date or time",
                hint="for example 2024-05-01 or 2024-05-01T12:00:00Z",
            ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return to_iso(moment)


def _match(column: str, value: str, params: dict[str, Any], clauses: list[str]) -> None:
    """Exact match, or a prefix match for a trailing ``*`` (no LIKE: its escaping differs)."""
    if value.endswith("*"):
        prefix = value[:-1]
        params[column] = prefix
        params[f"{column}_n"] = len(prefix)
        clauses.append(f"substr({column}, 1, :{column}_n) = :{column}")
    else:
        params[column] = value
        clauses.append(f"{column} = :{column}")


class AuditService:
    def __init__(self, services: Services) -> None:
        self._services = services
        self._settings = services.settings

    # -- reading --------------------------------------------------------------------------

    def _authorize(self, principal: Principal | None, request_id: str | None) -> None:
        """``audit:read`` for a principal a front end names (API, panel); a refused token is
        audited. The CLI, which holds the database itself, passes none."""
        if principal is not None:
            from tundra.core.identity.scopes import require

            require(self._services, principal, "audit:read", request_id=request_id)

    def list(
        self,
        *,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        actor: str | None = None,
        action: str | None = None,
        resource: str | None = None,
        limit: int = 100,
        after_seq: int | None = None,
        before_seq: int | None = None,
        newest_first: bool = False,
        principal: Principal | None = None,
        request_id: str | None = None,
    ) -> list[AuditRow]:
        """Rows matching every filter, in seq order (or newest first); ``after_seq`` and
        ``before_seq`` are the pagination cursors. ``since`` is inclusive, ``until`` exclusive;
        a trailing ``*`` on actor, action or resource matches a prefix."""
        self._authorize(principal, request_id)
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(f"--limit must be between 1 and {MAX_LIMIT}")
        clauses: list[str] = []
        params: dict[str, Any] = {"limit": limit}
        start, end = parse_time(since, name="since"), parse_time(until, name="until")
        if start:
            clauses.append("occurred_at >= :since")
            params["since"] = start
        if end:
            clauses.append("occurred_at < :until")
            params["until"] = end
        for column, value in (("actor", actor), ("action", action), ("resource", resource)):
            if value:
                _match(column, value, params, clauses)
        if after_seq is not None:
            clauses.append("seq > :after_seq")
            params["after_seq"] = after_seq
        if before_seq is not None:
            clauses.append("seq < :before_seq")
            params["before_seq"] = before_seq
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "DESC" if newest_first else "ASC"
        with self._services.db.read() as tx:
            # Only fixed column names and placeholders reach the text; values are parameters.
            sql = (
                f"SELECT {_COLUMNS} FROM audit_log{where}"  # noqa: S608
                f" ORDER BY seq {order} LIMIT :limit"
            )
            rows = tx.fetchall(sql, params)
        return [AuditRow.from_db(row) for row in rows]

    def head(self) -> tuple[int, str]:
        """The newest (seq, chain_hash), or (0, 32 zero bytes in hex) for an empty log."""
        with self._services.db.read() as tx:
            row = tx.fetchone("SELECT seq, chain_hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        return (int(row["seq"]), row["chain_hash"]) if row else (0, GENESIS)

    def export(
        self,
        out: IO[Any],
        *,
        format: str,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        principal: Principal | None = None,
        request_id: str | None = None,
    ) -> int:
        """Stream rows to ``out`` (text or binary) as ``jsonl``, ``csv`` or ``json``.

        A filtered export is the contiguous seq range from the first row at or after ``since``
        to the last before ``until``; it verifies on its own from its first row's prev_hash.
        """
        self._authorize(principal, request_id)
        start, end = parse_time(since, name="since"), parse_time(until, name="until")
        with self._services.db.read() as tx:
            span = seq_range(tx, since=start, until=end)
            rows = iter(()) if span is None else rows_between(tx, *span)
            return write_rows(rows, out, format)

    # -- verifying ------------------------------------------------------------------------

    def verify(
        self,
        *,
        file: Path | None = None,
        checkpoint: Path | None = None,
        vkey: Path | None = None,
        format: str | None = None,
        principal: Principal | None = None,
        request_id: str | None = None,
    ) -> VerifyResult:
        """Verify the database chain, or an export ``file``, optionally against a checkpoint.

        Damage is reported in the result (``ok`` False, ``first_bad_seq``, ``reason``); a
        malformed checkpoint or verifier key raises :class:`InvalidFile`.
        """
        self._authorize(principal, request_id)
        against: tuple[int, str] | None = None
        if checkpoint is not None:
            verified = self.read_checkpoint(checkpoint, vkey=vkey)
            against = (verified.seq, verified.head_hash)
        if file is not None:
            from tundra.core.audit.verify_file import verify_file

            return verify_file(Path(file), fmt=format, checkpoint=against)
        from tundra.core.audit.verify_db import verify_database

        return verify_database(self._services.db, checkpoint=against)

    # -- checkpoints ----------------------------------------------------------------------

    def ensure_checkpoint_key(self) -> bool:
        """Create the checkpoint signing key and its verifier key; False if the key exists."""
        settings = self._settings
        if settings.checkpoint_key_path.exists() or settings.checkpoint_key_path.is_symlink():
            if not settings.checkpoint_vkey_path.exists():
                # A lost public half is re-derived; the secret half is never replaced.
                public = self._signer().public()
                write_secret_file(
                    settings.checkpoint_vkey_path, (public.encode() + "\n").encode(), mode=VKEY_MODE
                )
            return False
        make_private_dir(settings.home)
        signer = generate_signer()
        write_secret_file(settings.checkpoint_key_path, signer.encode().encode(), mode=0o400)
        write_secret_file(
            settings.checkpoint_vkey_path,
            (signer.public().encode() + "\n").encode(),
            mode=VKEY_MODE,
            replace=True,
        )
        return True

    def verifier_key(self, path: Path | None = None) -> VerifierKey:
        target = path or self._settings.checkpoint_vkey_path
        try:
            text = target.read_text("utf-8")
        except FileNotFoundError as exc:
            raise ConfigError(
                f"no checkpoint verifier key at {target}",
                hint="pass --vkey, or run `tundra init` to create the keys",
            ) from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidFile(f"cannot read the verifier key {target}: {exc}") from exc
        return VerifierKey.parse(text)

    def read_checkpoint(self, path: Path, *, vkey: Path | None = None) -> Checkpoint:
        """Parse a signed checkpoint note and verify its signature (:class:`InvalidFile`)."""
        key = self.verifier_key(vkey)
        try:
            with Path(path).open("rb") as handle:
                raw = handle.read(64 * 1024 + 1)
            text = raw.decode("utf-8")
        except FileNotFoundError as exc:
            raise InvalidFile(f"no checkpoint file at {path}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidFile(f"cannot read the checkpoint {path}: {exc}") from exc
        try:
            return parse_checkpoint(text, key)
        except InvalidFile as exc:
            raise InvalidFile(f"checkpoint {path}: {exc.message}", hint=exc.hint) from exc

    def checkpoint(self, *, out: Path | None = None) -> Path:
        """Sign the current head and write the note to ``out`` or checkpoints/<seq>.note."""
        signer = self._signer()
        seq, head = self.head()
        note = sign_checkpoint(Checkpoint(origin=signer.name, seq=seq, head_hash=head), signer)
        if out is None:
            folder = self._settings.checkpoints_dir
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            out = folder / f"{seq}.note"
        # The atomic writer: a checkpoint is never seen half-written. It is not secret (0644).
        write_secret_file(Path(out), note.encode("utf-8"), mode=NOTE_MODE, replace=True)
        return Path(out)

    def checkpoint_after_sensitive(self) -> Path:
        """Sign a checkpoint after a sensitive operation (key rotation, deletions, …)."""
        return self.checkpoint()

    def _signer(self) -> SignerKey:
        path = self._settings.checkpoint_key_path
        if not path.exists() and not path.is_symlink():
            raise ConfigError(
                f"no checkpoint signing key at {path}", hint="run `tundra init` to create it"
            )
        try:
            raw = read_secret_file(path, mode=0o400)
        except PermissionError as exc:
            raise ConfigError(f"the checkpoint signing key is not safe to use: {exc}") from exc
        try:
            return SignerKey.parse(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidFile(f"{path} is not a checkpoint signing key") from exc
