"""NX-03: the services' own configuration.

NX-03 asks the configured PostgreSQL (facts and rules in ``postgres``) and Valkey (in ``valkey``)
about their own configuration: loopback only, no ``trust`` rule, a password. What it cannot read
makes the result inconclusive, never a pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tundra.core.acceptance.checks.network.postgres import evaluate_postgres, pg_facts_for
from tundra.core.acceptance.checks.network.valkey import evaluate_valkey, valkey_facts
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

if TYPE_CHECKING:
    from tundra.core.acceptance.context import RunContext


@check(
    "NX-03",
    "PostgreSQL and Valkey configuration: loopback, no trust, a password",
    section=Section.NETWORK,
    severity=Severity.HIGH,
    needs=("services",),
)
def service_configuration(ctx: RunContext) -> Outcome:
    settings = ctx.services.settings
    evidence: dict[str, Any] = {}
    problems: list[str] = []
    unknown: list[str] = []
    pg = pg_facts_for(ctx)
    if pg is not None:
        evidence["postgresql"] = pg.evidence()
        if pg.listen_addresses is None:
            unknown.append("PostgreSQL listen_addresses")
        if pg.rules is None:
            unknown.append("PostgreSQL pg_hba rules (need a superuser or a readable hba file)")
        elif any(rule.type == "include" for rule in pg.rules):
            unknown.append("pg_hba include directives (not followed)")
        problems += evaluate_postgres(pg.listen_addresses, pg.rules)
    if settings.valkey_url:
        facts = valkey_facts(settings.valkey_url, timeout=ctx.io_timeout())
        evidence["valkey"] = facts
        if "bind" not in facts and "port" not in facts and facts["errors"]:
            unknown.append("Valkey configuration (" + "; ".join(facts["errors"].values()) + ")")
        else:
            if facts.get("bind") is None and facts.get("port") != "0":
                unknown.append("Valkey bind")
            if facts.get("default_user") is None and "requirepass_set" not in facts:
                unknown.append("Valkey authentication")
        problems += evaluate_valkey(facts)
    if pg is None and not settings.valkey_url:
        return skipped("no PostgreSQL or Valkey configured: the embedded stores listen nowhere")
    evidence["problems"] = problems
    evidence["not_evaluated"] = unknown
    if problems:
        return failed("; ".join(problems), **evidence)
    if unknown:
        return errored("could not evaluate: " + "; ".join(unknown), **evidence)
    return passed("loopback only, no trust rules, authentication required", **evidence)
