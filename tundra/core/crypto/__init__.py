"""Cryptography: master key, keyring, envelope encryption, passwords, signing keys."""
