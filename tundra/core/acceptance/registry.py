"""The check registry: stable ids, titles, sections, severities, and what each check needs.

A check is a plain synchronous function taking a :class:`~tundra.core.acceptance.context.RunContext`
and returning an :class:`~tundra.core.acceptance.model.Outcome`. It registers itself with the
:func:`check` decorator at import time; the section modules under
:mod:`tundra.core.acceptance.checks` are imported by :func:`all_checks`.

Example (a check module, e.g. ``tundra/core/acceptance/checks/headers.py``)::

    from tundra.core.acceptance.context import RunContext
    from tundra.core.acceptance.model import Outcome, Section, Severity, failed, passed
    from tundra.core.acceptance.registry import check

    @check("HD-05", "No X-Powered-By, no version in Server",
           section=Section.HEADERS, severity=Severity.LOW)
    def no_banner(ctx: RunContext) -> Outcome:
        response = ctx.http().get("/")
        server = response.header("server") or ""
        evidence = {"request": response.evidence(), "server": server}
        if response.header_values("x-powered-by"):
            return failed("X-Powered-By is sent", **evidence)
        if any(ch.isdigit() for ch in server):
            return failed(f"Server carries a version: {server!r}", **evidence)
        return passed("no banner", **evidence)

Rules for checks:

- Raise nothing on purpose: return ``failed(...)`` when the deployment is wrong and
  ``errored(...)`` when the check cannot decide. An exception still ends up as an error result
  (with the exception in the evidence), but a clear ``errored`` summary is better.
- Every outcome carries evidence (also a pass): what was sent, what came back, what was parsed.
- ``needs`` names inputs the runner must have: ``"credentials"`` (``--user`` and a password),
  ``"agent_identity"`` (``--agent-cert``/``--agent-key``), ``"services"`` (the local control
  plane; implies ``local=True``). Without them the check is skipped, naming the option.
- ``local=True`` marks a host-local check (files, listeners, units): skipped unless the runner
  is on the panel host (``--local``).
- Expensive shared work (one login for all identity checks) goes through ``ctx.memo(key, fn)``;
  what must be undone after the run (log out, revoke a token) is registered with
  ``ctx.at_end(name, fn)`` and runs once every check has finished.
- ``run_last=True``: the check starts only after every other check has finished (it disturbs
  them, e.g. a brute-force storm that locks the runner's source address).
- Long loops should stop when ``ctx.cancelled`` is set (the check overran its time limit);
  network calls should use ``ctx.io_timeout()``, which is capped by the check's deadline.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from tundra.core.acceptance.model import CATALOGUE, Outcome, Section, Severity
from tundra.core.errors import InvalidInput

if TYPE_CHECKING:
    from tundra.core.acceptance.context import RunContext

CheckFn = Callable[["RunContext"], Outcome]

#: Inputs a check may need, and the option that supplies each (quoted in skip reasons).
NEEDS: Final[dict[str, str]] = {
    "credentials": "--user with --password-env (and --totp-secret-env if TOTP is enabled)",
    "agent_identity": "--agent-cert and --agent-key",
    "services": "--local on the panel host (an initialised $TUNDRA_HOME)",
}


@dataclass(frozen=True, slots=True)
class CheckSpec:
    id: str
    title: str
    section: Section
    severity: Severity
    fn: CheckFn
    timeout: float = 10.0
    local: bool = False
    needs: tuple[str, ...] = ()
    #: Start only once every other check has finished (a check that disturbs the others, such
    #: as a brute-force storm that locks the runner's address).
    run_last: bool = False


def _catalogue_order(spec: CheckSpec) -> tuple[int, str]:
    order = list(CATALOGUE)
    return (order.index(spec.id) if spec.id in CATALOGUE else len(order), spec.id)


class Registry:
    """A set of checks by id. The module-level default registry is what ``tundra`` runs."""

    def __init__(self, *, strict_catalogue: bool = True) -> None:
        # Tests build their own registries with made-up ids; the real one admits only the
        # catalogue's ids, so a typo in a check module is an import-time error, not a new id.
        self._strict = strict_catalogue
        self._checks: dict[str, CheckSpec] = {}
        self._lock = threading.Lock()

    def check(
        self,
        id: str,
        title: str,
        *,
        section: Section,
        severity: Severity,
        timeout: float = 10.0,
        local: bool = False,
        needs: Iterable[str] = (),
        run_last: bool = False,
    ) -> Callable[[CheckFn], CheckFn]:
        needs = tuple(needs)
        unknown = [n for n in needs if n not in NEEDS]
        if unknown:
            raise ValueError(f"check {id}: unknown needs {unknown}; known: {sorted(NEEDS)}")
        if self._strict and CATALOGUE.get(id) != section:
            raise ValueError(f"check {id} is not in the catalogue's {section} section")
        if timeout <= 0:
            raise ValueError(f"check {id}: timeout must be positive")
        # Needing the local services only makes sense on the panel host.
        local = local or "services" in needs

        def register(fn: CheckFn) -> CheckFn:
            spec = CheckSpec(id, title, section, severity, fn, timeout, local, needs, run_last)
            with self._lock:
                existing = self._checks.get(id)
                if existing is not None and existing.fn is not fn:
                    raise ValueError(f"check {id} is registered twice")
                self._checks[id] = spec
            return fn

        return register

    def all(self) -> list[CheckSpec]:
        with self._lock:
            return sorted(self._checks.values(), key=_catalogue_order)

    def get(self, check_id: str) -> CheckSpec:
        with self._lock:
            try:
                return self._checks[check_id.upper()]
            except KeyError:
                raise InvalidInput(
                    f"unknown check {check_id!r}", hint="`tundra acceptance list` shows the ids"
                ) from None

    def select(self, sections: Collection[str] = (), ids: Collection[str] = ()) -> list[CheckSpec]:
        """Checks in any of ``sections`` or with any of ``ids``; both empty means all.

        Unknown sections or ids are :class:`InvalidInput` (a usage error), never silently empty.
        """
        wanted_sections: set[Section] = set()
        for name in sections:
            try:
                wanted_sections.add(Section(name.lower()))
            except ValueError:
                raise InvalidInput(
                    f"unknown section {name!r}",
                    hint="one of " + ", ".join(s.value for s in Section),
                ) from None
        wanted_ids = {self.get(i).id for i in ids}
        checks = self.all()
        if not wanted_sections and not wanted_ids:
            return checks
        return [c for c in checks if c.section in wanted_sections or c.id in wanted_ids]


_default = Registry()
_active: Registry | None = None
_loaded = False
_load_lock = threading.Lock()


def default_registry(*, load: bool = True) -> Registry:
    """The registry checks register into, with every section module imported (``load``)."""
    global _loaded
    with _load_lock:
        if load and not _loaded:
            from tundra.core.acceptance.checks import load_all

            load_all()
            _loaded = True
    return _default


def current() -> Registry:
    """The registry runs use: the default one, or the one a test installed with :func:`use`."""
    return _active if _active is not None else default_registry()


@contextlib.contextmanager
def use(registry: Registry) -> Iterator[Registry]:
    """Run with ``registry`` instead of the default (tests: fake checks that do not leak)."""
    global _active
    previous = _active
    _active = registry
    try:
        yield registry
    finally:
        _active = previous


def check(
    id: str,
    title: str,
    *,
    section: Section,
    severity: Severity,
    timeout: float = 10.0,
    local: bool = False,
    needs: Iterable[str] = (),
    run_last: bool = False,
) -> Callable[[CheckFn], CheckFn]:
    """Register a check in the default registry (see the module docstring)."""
    return _default.check(
        id,
        title,
        section=section,
        severity=severity,
        timeout=timeout,
        local=local,
        needs=needs,
        run_last=run_last,
    )


def all_checks() -> list[CheckSpec]:
    return current().all()


def select(sections: Collection[str] = (), ids: Collection[str] = ()) -> list[CheckSpec]:
    return current().select(sections, ids)
