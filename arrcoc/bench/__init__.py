"""Benchmarks: `arrcoc bench tokens` (accuracy per visual token against equal-token baselines)."""
