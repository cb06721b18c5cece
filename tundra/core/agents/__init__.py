"""Agents: enrollment, identities and certificates, the registry, signed commands."""
