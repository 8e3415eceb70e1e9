"""The benchmark suite behind `make bench`: every gateway hot path against a baseline measured
in the same run (nginx, the upstream called directly, raw disk), one report."""
