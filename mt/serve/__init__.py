"""Serving: the HTTP app with its batcher (app), the web page that looks inside a translation (page,
static/), and a launcher for a server process (process)."""
