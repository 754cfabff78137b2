"""cordon-console: the responder side of the console channel (DESIGN §10)."""
