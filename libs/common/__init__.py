"""Shared building blocks of every Portico process."""
