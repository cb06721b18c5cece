"""Acceptance checks of the storage section (host-local): ST-01 … ST-04.

Each check is a thin wrapper around a function that takes explicit paths and parameters
(:func:`inspect_master_key`, :func:`find_leaks`, :func:`score_units`, :func:`inspect_data_dirs`),
so the rules are exercised directly by the tests and by the checks alike.

Importing this package registers every check: the registry imports
``tundra.core.acceptance.checks.storage`` by name, and this module imports each submodule.
One module per concern, each with the decisions it owns (to be repeated in docs/acceptance.md):

- ``service``: the running ``tundra serve`` processes and the service user.
- ``master_key``: ST-01 (the master key file) and reading a key file's bytes.
- ``leaks``: ST-02 (key material not leaked).
- ``units``: ST-03 (systemd unit scores) and the agreed thresholds.
- ``data_dirs``: ST-04 (data directories and config not world-readable).
"""

from __future__ import annotations

from tundra.core.acceptance.checks.storage import data_dirs, leaks, master_key, service, units
from tundra.core.acceptance.checks.storage.data_dirs import (
    PUBLIC_SUFFIXES,
    data_directories,
    inspect_data_dirs,
)
from tundra.core.acceptance.checks.storage.leaks import (
    LeakReport,
    LeakSource,
    find_leaks,
    key_forms,
    leak_sources,
    secrets_not_leaked,
)
from tundra.core.acceptance.checks.storage.master_key import (
    ACL_XATTR,
    PROBE_USER,
    inspect_master_key,
    master_key_file,
    open_as,
    parse_acl,
    read_acl,
    read_key_bytes,
)
from tundra.core.acceptance.checks.storage.service import (
    ServeProcess,
    ServiceUser,
    resolve_user,
    serve_processes,
    service_user,
    serving,
)
from tundra.core.acceptance.checks.storage.units import (
    DEFAULT_UNIT_POLICY,
    SYSTEM_UNIT_DIRS,
    UNIT_POLICIES,
    UnitPolicy,
    analyze_unit,
    find_units,
    score_units,
    service_units,
    shipped_unit_dir,
    unit_user,
)

__all__ = [
    "ACL_XATTR",
    "DEFAULT_UNIT_POLICY",
    "PROBE_USER",
    "PUBLIC_SUFFIXES",
    "SYSTEM_UNIT_DIRS",
    "UNIT_POLICIES",
    "LeakReport",
    "LeakSource",
    "ServeProcess",
    "ServiceUser",
    "UnitPolicy",
    "analyze_unit",
    "data_directories",
    "data_dirs",
    "find_leaks",
    "find_units",
    "inspect_data_dirs",
    "inspect_master_key",
    "key_forms",
    "leak_sources",
    "leaks",
    "master_key",
    "master_key_file",
    "open_as",
    "parse_acl",
    "read_acl",
    "read_key_bytes",
    "resolve_user",
    "score_units",
    "secrets_not_leaked",
    "serve_processes",
    "service",
    "service_units",
    "service_user",
    "serving",
    "shipped_unit_dir",
    "unit_user",
    "units",
]
