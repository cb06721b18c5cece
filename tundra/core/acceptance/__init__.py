"""Security acceptance tests of a live deployment (``tundra acceptance run``).

The package owns the check model (:mod:`.model`), the registry (:mod:`.registry`), what a check
receives (:mod:`.context`), the concurrent runner (:mod:`.runner`), waivers and baselines, the
machine-readable reporters and :class:`~.service.AcceptanceService` for the panel and the API.
The checks themselves live in :mod:`.checks`, one module per catalogue section.
"""

from __future__ import annotations
