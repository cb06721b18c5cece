"""The internal PKI: Tundra's own CA and the certificates it issues (panel, later agents)."""
