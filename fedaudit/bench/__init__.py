"""Benchmarks behind `fedaudit bench`: each measures a baseline in the same command and prints ratios."""
