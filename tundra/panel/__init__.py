"""Reserved for the panel front end (later issues); present so the layering contract names it."""
