"""ID-04 and ID-05: what failed logins reveal (user enumeration) and what they lock
(brute-force throttling), and the local clean-up of the throttle counters they create.

Failed logins are counted per account and per source address, and ``login_max_failures``
(default 5) failures from one address lock that address. ID-04 and ID-05 therefore fail on
purpose as little as they can:

- When the target is an IPv4 loopback address (the runner on the panel host), each failing
  attempt comes from its own random ``127.x.y.z`` source: the runner's own address is never
  locked and the other checks keep working while ID-05 holds its lock.
- Otherwise ID-04 makes at most 4 failures (2 per kind), under the default limit, and ID-05's
  storm locks the runner's address for ``login_lock_seconds``: it should run last (its evidence
  says how long the lock lasts).
- With ``--local`` (the runner has the local services) both checks afterwards delete the throttle
  counters their own attempts created, so the next run starts clean.

ID-04 compares status, headers and body (with the request id, CSRF token and typed name masked)
of unknown-user and wrong-password answers, and their timing: a leak is reported when the
medians *and* the minimums differ by more than max(50 ms, 25 % of the slower median) in the same
direction. Load from concurrent checks only adds time, so it moves the medians but rarely the
minimums; a missing dummy hash moves both. With ``--local`` a leak must show in a second batch.

ID-05's storm uses a random user name that does not exist, never the acceptance account: the
account is not locked for anyone else. The lock is shown with the *right* password of the
acceptance account from the locked source, which must be refused. A panel that counted failures
per account only would fail this (the spec wants both); per-account and per-source counting
cannot be told apart from one address.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import statistics
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from tundra.core.acceptance.checks.identity.auth import shared_login
from tundra.core.acceptance.checks.identity.base import Inconclusive, _guard, _verdict, services_of
from tundra.core.acceptance.checks.identity.browser import (
    REDIRECTS,
    Browser,
    _normalised,
    password_accepted,
)
from tundra.core.acceptance.context import HttpResponse, RunContext
from tundra.core.acceptance.model import Outcome, Section, Severity
from tundra.core.acceptance.registry import check

if TYPE_CHECKING:
    from tundra.core.services import Services


#: ID-04: unknown-user and wrong-password answers may differ (medians and minimums) by at most
#: this many ms, or this fraction of the slower median, whichever is larger. A missing dummy
#: hash shows as the full Argon2 time (hundreds of ms with the production parameters).
TIMING_TOLERANCE_MS = 50.0
TIMING_TOLERANCE_RATIO = 0.25
#: ID-04 attempts per kind: from one address (stays under the default limit of 5 failures),
#: or with a fresh loopback source per attempt.
SAMPLES_ONE_SOURCE = 2
SAMPLES_SPREAD = 3
#: ID-05: most failed attempts before a remote run gives up on seeing a lock.
STORM_LIMIT = 20


# --------------------------------------------------------------------------------------------
# Source addresses


def loopback_v4(host: str) -> bool:
    """The target is reached over IPv4 loopback (where any 127/8 source address works)."""
    if host == "localhost":
        try:
            infos = socket.getaddrinfo(host, None, socket.AF_INET)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.version == 4 and address.is_loopback


def spare_loopback_source() -> str | None:
    """A random 127.a.b.c (never 127.0.0.1) this host can bind, or None."""
    for _ in range(5):
        a, b, c = secrets.randbelow(254) + 1, secrets.randbelow(256), secrets.randbelow(254) + 1
        candidate = f"127.{a}.{b}.{c}"
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((candidate, 0))
            return candidate
        except OSError:
            continue
    return None


# --------------------------------------------------------------------------------------------
# Local clean-up of throttle counters


def source_address(ctx: RunContext) -> str | None:
    """The address the panel sees this runner connect from: the kernel's route choice for
    the target (a connected UDP socket sends nothing)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            ctx.target.host, ctx.target.port, type=socket.SOCK_STREAM
        )[0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            return str(sock.getsockname()[0])
    except OSError:
        return None


def clear_throttle(
    services: Services, names: Iterable[str], sources: Iterable[str | None]
) -> list[str]:
    """Delete the failed-login counters and locks of ``names`` and ``sources`` (local only)."""
    from tundra.core.identity.throttle import LoginThrottle

    throttle = LoginThrottle(services)
    keys: set[str] = set()
    for name in names:
        for source in [*sources, None]:
            keys.update(throttle._counters(name, source))  # the throttle's own key names
    deleted = []
    for key in sorted(keys):
        for suffix in ("", ":locked", ":audited"):
            if services.kv.delete(key + suffix):
                deleted.append(key + suffix)
    return deleted


# --------------------------------------------------------------------------------------------
# ID-04


_VARYING_HEADERS = frozenset({"date", "x-request-id", "content-length", "set-cookie"})


def _shape(response: HttpResponse) -> dict[str, Any]:
    return {
        "status": response.status,
        "headers": sorted({k.lower() for k, _ in response.headers} - _VARYING_HEADERS),
        "cookies": sorted(
            (c.name, tuple(sorted((k, str(v)) for k, v in c.attributes.items())))
            for c in response.set_cookies()
        ),
    }


def _sample(ctx: RunContext, samples: int, *, spread: bool) -> dict[str, Any]:
    """One batch: ``samples`` rounds of an unknown user and the real user with a wrong
    password, in alternating order, each from a fresh browser (and source when ``spread``)."""
    user = ctx.options.user or ""
    batch: dict[str, Any] = {
        "attempts": {"unknown_user": [], "wrong_password": []},
        "bodies": {"unknown_user": [], "wrong_password": []},
        "records": [],
        "names": [],
        "sources": [],
    }
    order = ["unknown_user", "wrong_password"]
    for round_ in range(samples):
        for kind in order if round_ % 2 == 0 else order[::-1]:
            source = spare_loopback_source() if spread else None
            batch["sources"].append(source)
            browser = Browser(ctx, source=source)
            page = browser.get("/login")
            if page.status != 200 or not browser.csrf:
                raise Inconclusive(f"the login page answered {page.status}")
            name = user
            if kind == "unknown_user":
                name = "acc" + secrets.token_hex(4)
                batch["names"].append(name)
            wrong = "wrong-" + secrets.token_urlsafe(12)
            answer = browser.post_form(
                "/login", [("username", name), ("password", wrong), ("next", "/")]
            )
            batch["records"].append(
                {
                    "kind": kind,
                    "source": source,
                    "status": answer.status,
                    "elapsed_ms": round(answer.elapsed_ms, 1),
                    "bytes": len(answer.body),
                }
            )
            if answer.status == 429:
                raise Inconclusive(
                    "throttled while sampling (an earlier run's failures lock this source; "
                    f"Retry-After {answer.header('retry-after')})",
                    attempts=batch["records"],
                )
            if password_accepted(answer):
                raise Inconclusive("a wrong password was accepted", attempts=batch["records"])
            varying = [*browser.cookies.values(), browser.csrf or "", name, wrong]
            batch["attempts"][kind].append(answer)
            batch["bodies"][kind].append(_normalised(answer, varying))
    return batch


def _timing(attempts: Mapping[str, list[HttpResponse]]) -> dict[str, Any]:
    """Medians and minimums per kind; a leak when both differ beyond the tolerance in the same
    direction. Load on the server only adds time, so a quiet sample of each kind brings the
    minimums together, while a missing dummy hash shifts every known-user answer."""
    times = {k: [r.elapsed_ms for r in v] for k, v in attempts.items()}
    medians = {k: statistics.median(v) for k, v in times.items()}
    minimums = {k: min(v) for k, v in times.items()}
    tolerance = max(TIMING_TOLERANCE_MS, TIMING_TOLERANCE_RATIO * max(medians.values()))
    d_median = medians["wrong_password"] - medians["unknown_user"]
    d_minimum = minimums["wrong_password"] - minimums["unknown_user"]
    leak = abs(d_median) > tolerance and abs(d_minimum) > tolerance and d_median * d_minimum > 0
    return {
        "medians_ms": {k: round(v, 1) for k, v in medians.items()},
        "minimums_ms": {k: round(v, 1) for k, v in minimums.items()},
        "median_delta_ms": round(d_median, 1),
        "minimum_delta_ms": round(d_minimum, 1),
        "tolerance_ms": round(tolerance, 1),
        "leak": leak,
    }


@check(
    "ID-04",
    "No user enumeration at login",
    section=Section.IDENTITY,
    severity=Severity.MEDIUM,
    timeout=60.0,
    needs=("credentials",),
)
@_guard
def no_enumeration(ctx: RunContext) -> Outcome:
    user = ctx.options.user or ""
    spread = loopback_v4(ctx.target.host) and spare_loopback_source() is not None
    samples = SAMPLES_SPREAD if spread else SAMPLES_ONE_SOURCE
    services = services_of(ctx)
    if services is not None:
        # Never reach a lock: it would refuse the other checks' logins. With a source per
        # attempt only the account counts (wrong passwords); otherwise the source counts all.
        most = services.settings.login_max_failures
        samples = max(1, min(samples, most - 2 if spread else (most - 1) // 2))

    def clean(batch: dict[str, Any]) -> None:
        if services is not None:
            clear_throttle(
                services, [user, *batch["names"]], [*batch["sources"], source_address(ctx)]
            )

    batch = _sample(ctx, samples, spread=spread)
    clean(batch)
    timing = [_timing(batch["attempts"])]
    if timing[0]["leak"] and services is not None:
        # Locally the counters were just reset: confirm with a second batch, so that a burst
        # of load from concurrent checks is not mistaken for a leak.
        second = _sample(ctx, samples, spread=spread)
        clean(second)
        timing.append(_timing(second["attempts"]))

    problems: list[str] = []
    attempts, bodies = batch["attempts"], batch["bodies"]
    shapes = {k: [_shape(r) for r in v] for k, v in attempts.items()}
    first = shapes["unknown_user"][0]
    if any(s != first for v in shapes.values() for s in v):
        problems.append(
            "wrong user and wrong password differ in status or headers: "
            f"{shapes['unknown_user'][0]} vs {shapes['wrong_password'][0]}"
        )
    reference = bodies["unknown_user"][0]
    if any(b != reference for v in bodies.values() for b in v):
        a, b = reference, bodies["wrong_password"][0]
        at = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
        problems.append(
            "the bodies differ (normalised for request id, CSRF token and the typed name) "
            f"at byte {at}: {a[max(0, at - 40) : at + 40]!r} vs {b[max(0, at - 40) : at + 40]!r}"
        )
    if all(t["leak"] for t in timing):
        last = timing[-1]
        problems.append(
            "timing differs: median {u} ms (unknown user) vs {w} ms (wrong password), minimum "
            "{mu} vs {mw} ms, tolerance {t} ms".format(
                u=last["medians_ms"]["unknown_user"],
                w=last["medians_ms"]["wrong_password"],
                mu=last["minimums_ms"]["unknown_user"],
                mw=last["minimums_ms"]["wrong_password"],
                t=last["tolerance_ms"],
            )
        )
    evidence = {
        "samples_per_kind": samples,
        "source_per_attempt": spread,
        "status": first["status"],
        "timing": timing,
        "tolerance_rule": f"a leak when the medians and the minimums both differ by more than "
        f"max({TIMING_TOLERANCE_MS:.0f} ms, {TIMING_TOLERANCE_RATIO:.0%} of the slower median)"
        ", in the same direction (and, with --local, again in a second batch)",
        "attempts": batch["records"],
        "local_cleanup": services is not None,
    }
    return _verdict(
        problems,
        f"unknown user and wrong password: same status {first['status']}, same body, medians "
        f"{abs(timing[-1]['median_delta_ms'])} ms apart (tolerance {timing[-1]['tolerance_ms']} "
        "ms)",
        evidence,
    )


# --------------------------------------------------------------------------------------------
# ID-05


@check(
    "ID-05",
    "Brute-force throttling refuses even the right password",
    section=Section.IDENTITY,
    severity=Severity.HIGH,
    timeout=90.0,
    needs=("credentials",),
    # Its failure storm can lock the runner's address off a non-loopback target: run it alone,
    # after every other check has logged in.
    run_last=True,
)
@_guard
def throttling(ctx: RunContext) -> Outcome:
    user, password = ctx.options.user or "", ctx.options.password or ""
    shared_login(ctx)  # control: the credentials work (else a refusal would prove nothing)
    services = services_of(ctx)
    spare = spare_loopback_source() if loopback_v4(ctx.target.host) else None
    maximum = services.settings.login_max_failures if services is not None else None
    limit = STORM_LIMIT if maximum is None else maximum + 1
    storm_name = "acc" + secrets.token_hex(6)
    browser = Browser(ctx, source=spare)
    source = spare or source_address(ctx)
    statuses: list[int] = []
    lock: HttpResponse | None = None
    cleanup: dict[str, Any] = {"unlocked": False}
    try:
        page = browser.get("/login")
        if page.status != 200 or not browser.csrf:
            raise Inconclusive(f"the login page answered {page.status}")
        for _ in range(limit):
            if ctx.cancelled.is_set():
                raise Inconclusive("cancelled during the storm", statuses=statuses)
            answer = browser.post_form(
                "/login",
                [("username", storm_name), ("password", "wrong-" + secrets.token_urlsafe(12))],
            )
            statuses.append(answer.status)
            if answer.status == 429:
                lock = answer
                break
            if answer.status != 401:
                raise Inconclusive(
                    f"a failed login answered {answer.status}, not 401", statuses=statuses
                )
        # The right password of the real account, from the source that just failed.
        right = browser.post_form(
            "/login", [("username", user), ("password", password), ("next", "/")]
        )
        if password_accepted(right) and right.status in REDIRECTS:
            browser.post_form("/logout", [])  # best effort: end a session the lock let in
    finally:
        if services is not None:
            deleted = clear_throttle(services, [storm_name, user], [source])
            cleanup = {"unlocked": True, "keys_deleted": len(deleted)}
    accepted = password_accepted(right)
    failures = len(statuses) - (1 if lock is not None else 0)
    retry_after = (lock or right).header("retry-after")
    if maximum is not None and services is not None:
        lock_seconds: int | None = services.settings.login_lock_seconds
    else:
        lock_seconds = int(retry_after) if retry_after and retry_after.isdigit() else None
    evidence: dict[str, Any] = {
        "storm_user": "a random name that does not exist (the account itself is not locked)",
        "source": source,
        "source_is_spare_loopback_address": spare is not None,
        "failures_before_lock": failures,
        "statuses": statuses,
        "retry_after": retry_after,
        "right_password": {"status": right.status, "location": right.header("location")},
        "lock_seconds": lock_seconds,
        "configured_max_failures": maximum,
        **cleanup,
    }
    if not cleanup["unlocked"]:
        evidence["locked"] = (
            f"source {source} stays locked for {lock_seconds or 'login_lock_seconds'} s"
            + ("" if spare else ": logins from this runner fail until then (run ID-05 last)")
        )
    problems: list[str] = []
    if accepted:
        problems.append(
            f"after {failures} failed logins from {source}, the right password for {user!r} "
            "from the same source still got through (no lock per source)"
        )
    if maximum is not None and lock is not None and failures > maximum:
        problems.append(f"the lock came after {failures} failures; configured: {maximum}")
    signal = f"429, Retry-After {retry_after}" if lock is not None else "no 429"
    return _verdict(
        problems,
        f"locked after {failures} failures ({signal}); the right password was then refused "
        f"with {right.status}; lock {lock_seconds} s"
        + (", unlocked afterwards (--local)" if cleanup["unlocked"] else ""),
        evidence,
    )
