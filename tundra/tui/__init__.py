"""Reserved for the tui front end (later issues); present so the layering contract names it."""
