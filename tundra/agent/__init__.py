"""The agent: the front end that runs on every managed host (``tundra agent …``).

It dials out to the control plane's gateway and never listens. Modules: :mod:`.config` (the
TOML configuration), :mod:`.state` (key, certificates, command keys; the renewal swap),
:mod:`.enroll` (join token → identity), :mod:`.daemon` (the session, reconnects, renewal),
:mod:`.guard` (signed-command checks and the nonce cache), :mod:`.executors` (the allowlisted
command types and the facts), ``v1`` (the generated protocol). It imports the core's pure
helpers only (errors, crypto primitives, envelopes), never the control plane's services.
"""
