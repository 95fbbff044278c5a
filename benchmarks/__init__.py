"""Benchmarks: each module answers one question with a ratio against a baseline measured in the
same run. `python -m benchmarks.run` runs them all and writes benchmarks/results.json."""
