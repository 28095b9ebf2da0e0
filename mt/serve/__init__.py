"""Serving: the HTTP app (app) and a launcher for a server process (process)."""
