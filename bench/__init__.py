"""Benchmarks. `python -m bench` (`make bench`) runs the whole suite (bench/suite) and writes
bench/report.md + bench/report.json; the subpackages are the older single-topic benchmarks."""
