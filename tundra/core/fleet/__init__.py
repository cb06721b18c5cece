"""The fleet: managed servers (and, in a later slice, their agents, sites and databases)."""
