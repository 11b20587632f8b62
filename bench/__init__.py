"""Benchmarks: each a script that prints a table and appends it to bench/RESULTS.md. Run them as modules from the
repository root (`python -m bench.serve ...`), so they import each other and the installed packages alike."""
import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before any onnxruntime import
