"""Tests of the benchmark harness (bench/run.py)."""
