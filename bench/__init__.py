"""Benchmarks of the bridge's real handlers, each side by side with a reference measured in the same run.

Run with ``make bench`` (or ``python -m bench``); see bench/README.md. This package imports nothing
heavy at import time: the cold-start probe runs inside it in a fresh interpreter.
"""
