"""Identity: users and passwords, TOTP, re-authentication, API tokens and their scopes."""
