"""Benchmarks of the control plane against the predecessor design. Not part of the test suite."""
