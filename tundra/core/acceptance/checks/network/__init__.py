"""Acceptance checks of the network section: NX-01 … NX-03 (../shared/design/ACCEPTANCE.md).

NX-01 inventories this host's TCP listeners (PostgreSQL and Valkey on loopback only, no stray
wildcard listener), NX-02 probes the service ports from outside (refused or filtered), NX-03 asks
PostgreSQL and Valkey about their own configuration (loopback, no ``trust``, a password).

Importing this package registers every check: the registry imports
``tundra.core.acceptance.checks.network`` by name, and this module imports each submodule.
One module per concern:

- ``addresses``: loopback and wildcard hosts, ``HOST:PORT`` parsing, the service ports.
- ``listeners``: NX-01 (the ``/proc/net/tcp`` listener inventory).
- ``outside``: NX-02 (the outside view probe).
- ``postgres``: PostgreSQL's facts and pg_hba rules (shared with ST-04).
- ``valkey``: Valkey's facts and rules.
- ``configuration``: NX-03 (the services' own configuration).
"""

from __future__ import annotations

from tundra.core.acceptance.checks.network import (
    addresses,
    configuration,
    listeners,
    outside,
    postgres,
    valkey,
)
from tundra.core.acceptance.checks.network.addresses import configured_service_ports
from tundra.core.acceptance.checks.network.configuration import service_configuration
from tundra.core.acceptance.checks.network.listeners import (
    Listener,
    allowed_wildcard_ports,
    evaluate_listeners,
    listener_inventory,
    parse_proc_net_tcp,
    read_listeners,
)
from tundra.core.acceptance.checks.network.outside import (
    evaluate_outside,
    local_addresses,
    outside_view,
    run_probe,
)
from tundra.core.acceptance.checks.network.postgres import (
    evaluate_postgres,
    parse_pg_hba,
    pg_facts_for,
    postgres_facts,
)
from tundra.core.acceptance.checks.network.valkey import evaluate_valkey

__all__ = [
    "Listener",
    "addresses",
    "allowed_wildcard_ports",
    "configuration",
    "configured_service_ports",
    "evaluate_listeners",
    "evaluate_outside",
    "evaluate_postgres",
    "evaluate_valkey",
    "listener_inventory",
    "listeners",
    "local_addresses",
    "outside",
    "outside_view",
    "parse_pg_hba",
    "parse_proc_net_tcp",
    "pg_facts_for",
    "postgres",
    "postgres_facts",
    "read_listeners",
    "run_probe",
    "service_configuration",
    "valkey",
]
