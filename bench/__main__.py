"""`python -m bench [--quick]`: the whole benchmark suite, one report (see bench/suite)."""

from bench.suite.run import main

main()
