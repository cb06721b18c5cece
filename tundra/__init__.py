"""Tundra: a self-hosted control plane for Linux servers."""

__version__ = "0.1.0"
