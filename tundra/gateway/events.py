"""The gateway's log: one JSON object per line on the ``tundra.gateway`` logger.

Lines carry ids, addresses, reasons and timings, never certificates, keys or command payloads.
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("tundra.gateway")


def event(name: str, /, *, level: int = logging.INFO, **fields: Any) -> None:
    if log.isEnabledFor(level):
        log.log(level, json.dumps({"event": name, **fields}, separators=(",", ":"), default=str))
