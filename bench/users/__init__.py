"""Benchmarks of the users service (`python -m bench.users`)."""
