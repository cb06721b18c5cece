"""Identity checks ID-01…ID-08: cookies, the session's life, anonymous access, enumeration,
brute-force throttling, CSRF, re-authentication and API tokens (ACCEPTANCE.md "identity").

Importing this package registers every check: the registry imports
``tundra.core.acceptance.checks.identity`` by name, and this module imports each submodule.
One module per concern:

- ``base``: :class:`Inconclusive`, the guard that turns it into an error, the verdict helper.
- ``browser``: the small HTTPS browser the checks speak to the panel with, and its forms.
- ``auth``: TOTP codes, logging in, and the one login the checks share.
- ``api``: the API's operations (OpenAPI) and test tokens issued through the panel.
- ``sessions``: ID-01 (session cookie flags) and ID-02 (the session id's life).
- ``routes``: ID-03 (anonymous requests refused).
- ``failed_logins``: ID-04 (no user enumeration) and ID-05 (brute-force throttling).
- ``csrf``: ID-06 (forged and cross-site posts refused).
- ``reauth``: ID-07 (re-authentication for sensitive operations, never by a token).
- ``tokens``: ID-08 (bad tokens refused alike; scope and resource enforced).
"""

from __future__ import annotations

from tundra.core.acceptance.checks.identity import (
    api,
    auth,
    base,
    browser,
    csrf,
    failed_logins,
    reauth,
    routes,
    sessions,
    tokens,
)
from tundra.core.acceptance.checks.identity.auth import authenticator, shared_login
from tundra.core.acceptance.checks.identity.base import Inconclusive
from tundra.core.acceptance.checks.identity.browser import (
    csrf_in,
    has_reauth_form,
    is_login_redirect,
)
from tundra.core.acceptance.checks.identity.csrf import csrf_refused
from tundra.core.acceptance.checks.identity.failed_logins import (
    SAMPLES_ONE_SOURCE,
    no_enumeration,
    spare_loopback_source,
    throttling,
)
from tundra.core.acceptance.checks.identity.reauth import reauthentication
from tundra.core.acceptance.checks.identity.routes import anonymous_refused
from tundra.core.acceptance.checks.identity.sessions import (
    _cookie_problems,
    cookie_flags,
    session_lifecycle,
)
from tundra.core.acceptance.checks.identity.tokens import api_tokens

__all__ = [
    "SAMPLES_ONE_SOURCE",
    "Inconclusive",
    "_cookie_problems",
    "anonymous_refused",
    "api",
    "api_tokens",
    "auth",
    "authenticator",
    "base",
    "browser",
    "cookie_flags",
    "csrf",
    "csrf_in",
    "csrf_refused",
    "failed_logins",
    "has_reauth_form",
    "is_login_redirect",
    "no_enumeration",
    "reauth",
    "reauthentication",
    "routes",
    "session_lifecycle",
    "sessions",
    "shared_login",
    "spare_loopback_source",
    "throttling",
    "tokens",
]
