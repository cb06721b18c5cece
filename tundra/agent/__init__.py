"""Reserved for the agent front end (later issues); present so the layering contract names it."""
