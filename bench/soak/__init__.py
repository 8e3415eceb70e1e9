"""Soak run: a bounded mixed load through the real gateway (see bench/soak/__main__.py)."""
