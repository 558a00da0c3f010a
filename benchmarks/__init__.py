"""Benchmarks (figures, never assertions). ``python -m benchmarks`` runs every ``bench_*`` module."""
