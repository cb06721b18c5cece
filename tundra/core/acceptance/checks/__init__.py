"""The checks of the catalogue, one module per section.

Importing a section module registers its checks (``@check``) in the default registry.
:func:`load_all` imports every section; a missing or broken module is an error, never a run
that silently has fewer checks.
"""

from __future__ import annotations

import importlib
from typing import Final

#: One module per catalogue section, in catalogue order.
SECTION_MODULES: Final = (
    "transport",
    "headers",
    "identity",
    "storage",
    "network",
    "agent",
    "audit",
)


def load_all() -> None:
    for name in SECTION_MODULES:
        importlib.import_module(f"{__name__}.{name}")
