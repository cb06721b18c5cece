"""Acceptance checks of the audit section: AU-01 (the chain verifies) and AU-02 (a change made
by the runner is in the log with its request id).

Two vantage points, used as available:

- **local** (``--local`` on the panel host, the control plane's services open): the chain is
  verified in the database by the core verifier, against the newest signed checkpoint
  (``--checkpoint FILE`` or the newest in ``$TUNDRA_HOME/checkpoints``); rows are looked up
  directly.
- **remote** (``--user`` and a password): the runner logs in to the panel as the acceptance
  account, creates a short-lived read-only API token through the tokens page (the harmless state
  change of AU-02, sent with the runner's own ``X-Request-ID``), logs the session out, and uses
  the token to ask the panel to verify its chain *and* to export the whole chain, which the
  runner verifies itself (a panel that lied in its own verification would be caught). The token
  is revoked when the run ends.

Without either, both checks skip naming the options to give.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from tundra.core.acceptance.context import HttpClient, HttpResponse, RunContext
from tundra.core.acceptance.model import (
    Outcome,
    Section,
    Severity,
    errored,
    failed,
    passed,
    skipped,
)
from tundra.core.acceptance.registry import check
from tundra.core.audit.actions import Action
from tundra.core.errors import ConfigError, InvalidFile, InvalidInput, TundraError

# The panel's wire names (a remote client speaks the protocol; core cannot import the panel).
SESSION_COOKIE = "__Host-tundra_session"
CSRF_COOKIE = "__Host-tundra_csrf"
TOKEN_CREATE_ACTION = str(Action.TOKEN_CREATE)
TOKEN_REVOKE_ACTION = str(Action.TOKEN_REVOKE)
#: Scopes of the runner's token: read the log, and revoke itself at the end.
TOKEN_SCOPES = ("audit:read", "tokens:write")
_PLAINTEXT = re.compile(r'id="new-token"[^>]*\bvalue="([^"]+)"|value="([^"]+)"[^>]*id="new-token"')
GENESIS = "0" * 64

NEEDS_ACCESS = (
    "needs the local services (--local on the panel host) or credentials "
    "(--user with --password-env)"
)


def new_request_id(purpose: str) -> str:
    """A request id the panel accepts from a client ([A-Za-z0-9._:-]{8,128})."""
    return f"acceptance-{purpose}-{secrets.token_hex(8)}"


# --------------------------------------------------------------------------------------------
# Remote access: one login, one short-lived token, shared by both checks


class AccessError(Exception):
    """The runner could not get API access; ``outcome`` says how to report it."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.summary)
        self.outcome = outcome


@dataclass(frozen=True)
class ApiAccess:
    plaintext: str = field(repr=False)
    token_id: str
    display_prefix: str
    user: str
    #: The X-Request-ID the runner sent with the creating request, and the one the panel
    #: answered (the audit row carries the latter).
    sent_request_id: str
    answered_request_id: str | None
    created_at: str
    evidence: dict[str, Any]


def _form_client(ctx: RunContext) -> HttpClient:
    return ctx.http(keep_cookies=True)


def _origin(ctx: RunContext) -> dict[str, str]:
    return {"Origin": ctx.target.base_url}


def _post_form(
    ctx: RunContext,
    client: HttpClient,
    path: str,
    fields: dict[str, str] | list[tuple[str, str]],
    *,
    request_id: str | None = None,
) -> HttpResponse:
    items = list(fields.items()) if isinstance(fields, dict) else list(fields)
    items.insert(0, ("csrf_token", client.cookies.get(CSRF_COOKIE, "")))
    headers = _origin(ctx) | {"Content-Type": "application/x-www-form-urlencoded"}
    if request_id:
        headers["X-Request-ID"] = request_id
    return client.post(path, body=urllib.parse.urlencode(items).encode(), headers=headers)


def _login(ctx: RunContext, client: HttpClient) -> None:
    """Log in through the panel's form (and TOTP step); AccessError when it does not work."""
    options = ctx.options
    client.get("/login")
    if CSRF_COOKIE not in client.cookies:
        raise AccessError(errored("the login page set no CSRF cookie", exchanges=client.evidence()))
    answer = _post_form(
        ctx,
        client,
        "/login",
        {"next": "/", "username": options.user or "", "password": options.password or ""},
    )
    location = answer.header("location") or ""
    if answer.status == 303 and location.startswith("/login/totp"):
        if not options.totp_secret:
            raise AccessError(
                errored(
                    "the account needs a TOTP code: give --totp-secret-env",
                    exchanges=client.evidence(),
                )
            )
        answer = _totp(ctx, client, options.totp_secret)
    elif answer.status == 303 and location.startswith("/login/enroll"):
        raise AccessError(
            errored(
                "the panel asks this account to enrol TOTP (an administrator?): use a"
                " non-admin account made with `tundra user add --acceptance`",
                exchanges=client.evidence(),
            )
        )
    if answer.status == 429:
        raise AccessError(
            errored(
                "the login was throttled (too many failures for this user or address)",
                exchanges=client.evidence(),
            )
        )
    if answer.status != 303 or SESSION_COOKIE not in client.cookies:
        raise AccessError(
            errored(
                f"the login as {options.user!r} did not succeed (HTTP {answer.status}):"
                " check --user and the password",
                exchanges=client.evidence(),
            )
        )


def _totp(ctx: RunContext, client: HttpClient, secret: str) -> HttpResponse:
    """Answer the TOTP step with a code for a time step no other login of this run used.

    The panel accepts each step once and none at or below the last it accepted, so every
    login of the run takes its codes from the identity section's one authenticator (shared
    through the run's memo, keyed by ``--totp-secret-env``'s secret).
    """
    from tundra.core.acceptance.checks.identity import authenticator

    shared = authenticator(ctx)
    if shared is None:  # the caller checked the secret is there
        raise AccessError(errored("no TOTP secret", given=bool(secret)))
    answer: HttpResponse | None = None
    for attempt in range(2):
        try:
            with shared.lock:
                code = shared.code(ctx)
                answer = _post_form(ctx, client, "/login/totp", {"next": "/", "code": code})
        except Exception as exc:  # out of time waiting for a fresh step (Inconclusive)
            raise AccessError(errored(f"no TOTP code could be used: {exc}")) from None
        if answer.status != 401 or attempt:
            break
        shared.skip_to_next()  # used by someone else: only later steps from now on
    assert answer is not None
    return answer


def _logout(ctx: RunContext, client: HttpClient) -> None:
    _post_form(ctx, client, "/logout", {})


def _api(token: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/json"} | (extra or {})


def _create_access(ctx: RunContext) -> ApiAccess:
    client = _form_client(ctx)
    _login(ctx, client)
    sent = new_request_id("AU-02")
    name = f"acceptance-{secrets.token_hex(4)}"
    created_at = _iso_now()
    try:
        page = _post_form(
            ctx,
            client,
            "/tokens",
            [("name", name), *[("scopes", s) for s in TOKEN_SCOPES], ("expires", "1")],
            request_id=sent,
        )
        match = _PLAINTEXT.search(page.text)
        if page.status != 201 or match is None:
            raise AccessError(
                errored(
                    f"creating a token through the tokens page answered HTTP {page.status}",
                    exchanges=client.evidence(),
                )
            )
        plaintext = match.group(1) or match.group(2)
        answered = page.header("x-request-id")
    finally:
        _logout(ctx, client)
    api = ctx.http()
    me = api.get("/api/v1/me", headers=_api(plaintext))
    if me.status != 200:
        raise AccessError(errored(f"the new token is refused by /api/v1/me (HTTP {me.status})"))
    token = me.json().get("token", {})
    access = ApiAccess(
        plaintext=plaintext,
        token_id=str(token.get("id")),
        display_prefix=str(token.get("prefix")),
        user=str(me.json().get("user")),
        sent_request_id=sent,
        answered_request_id=answered,
        created_at=created_at,
        evidence={"login_and_create": client.evidence(), "me": api.evidence()},
    )

    def revoke() -> None:
        done = ctx.http().delete(
            f"/api/v1/tokens/{access.token_id}",
            headers=_api(access.plaintext, {"X-Request-ID": new_request_id("cleanup")}),
        )
        if done.status != 200:
            raise RuntimeError(f"revoking the runner's token answered HTTP {done.status}")

    ctx.at_end("revoke the AU token", revoke)
    return access


def api_access(ctx: RunContext) -> ApiAccess:
    """The run's API token (created on first use, revoked at the end of the run)."""
    return ctx.memo("audit:api-access", lambda: _create_access(ctx))


def _iso_now() -> str:
    from tundra.core.clock import now, to_iso

    # A little slack: the panel's clock may be behind the runner's.
    return to_iso(now() - timedelta(minutes=5))


# --------------------------------------------------------------------------------------------
# Checkpoints


@dataclass(frozen=True)
class CheckpointRef:
    path: str
    seq: int
    head_hash: str
    signature: str


def parse_note_unverified(path: Path) -> CheckpointRef:
    """The seq and hash of a checkpoint note whose signature cannot be checked here (remote)."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidFile(f"cannot read the checkpoint {path}: {exc}") from None
    body = text.split("\n\n", 1)[0].split("\n")
    if len(body) < 3 or not body[1].isdigit():
        raise InvalidFile(f"{path} is not a checkpoint note (<origin>, <seq>, <hash> lines)")
    try:
        head = base64.b64decode(body[2], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidFile(f"{path}: the checkpoint's hash line is not base64") from None
    if len(head) != 32:
        raise InvalidFile(f"{path}: the checkpoint's hash is not 32 bytes")
    return CheckpointRef(
        str(path), int(body[1]), head.hex(), "not verified: no verifier key off the panel host"
    )


def newest_local_checkpoint(ctx: RunContext) -> tuple[CheckpointRef | None, list[str]]:
    """``--checkpoint`` or the newest valid note in $TUNDRA_HOME/checkpoints (signature checked).

    A note in the directory that does not verify is an InvalidFile: a forged or damaged
    checkpoint next to the real ones is itself a finding.
    """
    audit = ctx.services.audit
    if ctx.options.checkpoint is not None:
        paths = [ctx.options.checkpoint]
    else:
        folder = ctx.services.settings.checkpoints_dir
        paths = sorted(folder.glob("*.note")) if folder.is_dir() else []
    newest: CheckpointRef | None = None
    for path in paths:
        verified = audit.read_checkpoint(path)
        if newest is None or verified.seq > newest.seq:
            newest = CheckpointRef(str(path), verified.seq, verified.head_hash, "verified")
    return newest, [str(p) for p in paths]


# --------------------------------------------------------------------------------------------
# AU-01


@check(
    "AU-01",
    "The audit chain verifies end to end and against the newest checkpoint",
    section=Section.AUDIT,
    severity=Severity.CRITICAL,
    timeout=120.0,
)
def chain_verifies(ctx: RunContext) -> Outcome:
    if ctx.options.services is not None:
        return _chain_local(ctx)
    if ctx.options.has_credentials:
        return _chain_remote(ctx)
    return skipped(NEEDS_ACCESS)


def _chain_local(ctx: RunContext) -> Outcome:
    try:
        checkpoint, considered = newest_local_checkpoint(ctx)
    except InvalidFile as exc:
        return failed(f"a checkpoint does not verify: {exc}", checkpoint_error=str(exc))
    except ConfigError as exc:
        return errored(f"cannot verify checkpoints: {exc}")
    result = ctx.services.audit.verify(checkpoint=Path(checkpoint.path) if checkpoint else None)
    evidence: dict[str, Any] = {
        "vantage": "local database",
        "verification": result.as_dict(),
        "checkpoint": _checkpoint_evidence(checkpoint),
        "checkpoints_considered": considered,
    }
    if not result.ok:
        return failed(result.message, **evidence)
    return passed(_ok_summary(result.rows_checked, result.head_seq, checkpoint), **evidence)


def _ok_summary(rows: int, head: int, checkpoint: CheckpointRef | None) -> str:
    summary = f"{rows} rows verified from genesis to seq {head}"
    if checkpoint is None:
        return summary + "; no checkpoint to compare with (none given or found)"
    return summary + f"; matches the checkpoint at seq {checkpoint.seq}"


def _checkpoint_evidence(checkpoint: CheckpointRef | None) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    return {
        "path": checkpoint.path,
        "seq": checkpoint.seq,
        "head_hash": checkpoint.head_hash,
        "signature": checkpoint.signature,
    }


def _chain_remote(ctx: RunContext) -> Outcome:
    from tundra.core.audit.verify_file import verify_file

    try:
        access = api_access(ctx)
    except AccessError as exc:
        return exc.outcome
    checkpoint = None
    if ctx.options.checkpoint is not None:
        try:
            checkpoint = parse_note_unverified(ctx.options.checkpoint)
        except InvalidFile as exc:
            return failed(f"the checkpoint cannot be read: {exc}")
    client = ctx.http()
    server = client.get("/api/v1/audit-log/verify", headers=_api(access.plaintext))
    if server.status != 200:
        return errored(
            f"the panel's verification answered HTTP {server.status}", exchanges=client.evidence()
        )
    server_result = server.json()
    export = client.get("/api/v1/audit-log?format=jsonl", headers=_api(access.plaintext))
    if export.status != 200:
        return errored(f"the export answered HTTP {export.status}", exchanges=client.evidence())
    with tempfile.TemporaryDirectory(prefix="tundra-acceptance-") as tmp:
        path = Path(tmp) / "audit.jsonl"
        path.write_bytes(export.body)
        try:
            own = verify_file(
                path,
                fmt="jsonl",
                checkpoint=(checkpoint.seq, checkpoint.head_hash) if checkpoint else None,
            )
        except (InvalidFile, InvalidInput) as exc:
            return failed(f"the exported chain cannot be verified: {exc}")
    evidence: dict[str, Any] = {
        "vantage": "remote (API)",
        "panel_verification": server_result,
        "runner_verification": own.as_dict(),
        "export_bytes": len(export.body),
        "checkpoint": _checkpoint_evidence(checkpoint),
        "exchanges": client.evidence(),
    }
    if not server_result.get("ok"):
        return failed(
            f"the panel reports a broken chain: {server_result.get('message')}", **evidence
        )
    if not own.ok:
        return failed(f"the exported chain does not verify: {own.message}", **evidence)
    if (own.anchor_seq, own.anchor_hash) != (1, GENESIS) and own.rows_checked:
        return failed(
            f"the export does not start at the genesis row (starts at seq {own.anchor_seq})",
            **evidence,
        )
    if own.head_seq < int(server_result.get("head_seq", 0)):
        return failed(
            f"the export ends at seq {own.head_seq}, before the panel's head"
            f" {server_result.get('head_seq')}",
            **evidence,
        )
    return passed(_ok_summary(own.rows_checked, own.head_seq, checkpoint), **evidence)


# --------------------------------------------------------------------------------------------
# AU-02


@check(
    "AU-02",
    "A state change made by the runner appears in the log with its request id",
    section=Section.AUDIT,
    severity=Severity.HIGH,
    timeout=90.0,
)
def change_is_logged(ctx: RunContext) -> Outcome:
    if ctx.options.has_credentials:
        return _logged_remote(ctx)
    if ctx.options.services is not None:
        return _logged_local(ctx)
    return skipped(NEEDS_ACCESS)


def _find_remote(ctx: RunContext, access: ApiAccess, request_id: str) -> tuple[list[Any], Any]:
    client = ctx.http()
    query = urllib.parse.urlencode(
        {
            "action": TOKEN_CREATE_ACTION,
            "resource": f"token:{access.display_prefix}",
            "since": access.created_at,
            "limit": "100",
        }
    )
    answer = client.get(f"/api/v1/audit-log?{query}", headers=_api(access.plaintext))
    if answer.status != 200:
        return [], {"status": answer.status, "exchanges": client.evidence()}
    entries = answer.json().get("entries", [])
    return [e for e in entries if e.get("request_id") == request_id], client.evidence()


def _logged_remote(ctx: RunContext) -> Outcome:
    try:
        access = api_access(ctx)
    except AccessError as exc:
        return exc.outcome
    evidence: dict[str, Any] = {
        "vantage": "remote (API)",
        "change": f"created API token {access.display_prefix} through the tokens page",
        "sent_request_id": access.sent_request_id,
        "answered_request_id": access.answered_request_id,
        "token_id": access.token_id,
        "exchanges": access.evidence,
    }
    rid = access.answered_request_id
    if not rid:
        return failed("the panel's answer carries no X-Request-ID", **evidence)
    rows, lookup = _find_remote(ctx, access, rid)
    evidence["lookup"] = lookup
    if ctx.options.services is not None:
        local = _local_rows(ctx, rid)
        evidence["local_rows"] = local
        if not local:
            return failed(f"no row with request id {rid} in the local database", **evidence)
    if not rows:
        return failed(
            f"the audit log has no {TOKEN_CREATE_ACTION} row with request id {rid}", **evidence
        )
    row = rows[0]
    evidence["row"] = row
    problems = []
    if row.get("actor") != f"user:{access.user}":
        problems.append(f"actor {row.get('actor')!r} is not user:{access.user}")
    if (row.get("details") or {}).get("id") != access.token_id:
        problems.append("the row's details name another token")
    if problems:
        return failed("; ".join(problems), **evidence)
    echoed = "echoed the runner's id" if rid == access.sent_request_id else "assigned its own id"
    return passed(
        f"seq {row.get('seq')} records the change with request id {rid} ({echoed})", **evidence
    )


def _local_rows(ctx: RunContext, request_id: str) -> list[dict[str, Any]]:
    with ctx.services.db.read() as tx:
        rows = tx.fetchall(
            "SELECT seq, actor, action, resource, request_id FROM audit_log"
            " WHERE request_id = :rid ORDER BY seq",
            {"rid": request_id},
        )
    return [dict(row) for row in rows]


def _logged_local(ctx: RunContext) -> Outcome:
    """No credentials: make the change through the core as the local operator (CLI)."""
    from tundra.core.principal import cli_principal

    services = ctx.services
    owner = next((u for u in services.users.list() if u.is_acceptance and not u.disabled), None)
    if owner is None:
        return skipped(
            "no credentials and no acceptance account: give --user with --password-env, or"
            " create one with `tundra user add --acceptance NAME`"
        )
    principal = cli_principal()
    create_id, revoke_id = new_request_id("AU-02"), new_request_id("AU-02")
    try:
        created = services.tokens.create(
            principal,
            name=f"acceptance-{secrets.token_hex(4)}",
            scopes=["audit:read"],
            owner=owner.name,
            expires_in=timedelta(minutes=5),
            request_id=create_id,
        )
        services.tokens.revoke(principal, created.token.id, request_id=revoke_id)
    except TundraError as exc:
        return errored(f"the harmless change (token create/revoke) failed: {exc}")
    rows = {rid: _local_rows(ctx, rid) for rid in (create_id, revoke_id)}
    evidence = {
        "vantage": "local database",
        "change": f"created and revoked token {created.token.display_prefix} as {principal.actor}",
        "rows": rows,
    }
    expected = {create_id: TOKEN_CREATE_ACTION, revoke_id: TOKEN_REVOKE_ACTION}
    for rid, action in expected.items():
        if not any(r["action"] == action for r in rows[rid]):
            return failed(f"no {action} row with request id {rid}", **evidence)
    return passed(
        f"both rows carry the runner's request ids ({create_id}, {revoke_id})", **evidence
    )
