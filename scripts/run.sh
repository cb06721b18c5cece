#!/usr/bin/env bash
# Bring the control plane up on the embedded default: initialise $TUNDRA_HOME (idempotent; on the
# first run the generated admin password is shown once), then serve the panel and the API until
# Ctrl-C.
set -euo pipefail
: "${TUNDRA_HOME:=$PWD/tundra-home}"
export TUNDRA_HOME

tundra init --admin admin --generate-password
echo
echo "The panel's certificate comes from Tundra's internal CA: trust $TUNDRA_HOME/tls/ca.crt in"
echo "your browser, or accept the certificate once. Log in as 'admin' with the password above"
echo "(shown on the first run only); the panel then walks you through TOTP enrolment."
exec tundra serve
