"""Benchmark scripts of nephi (peer comparison, Jacobian strategies, memory); not installed."""
