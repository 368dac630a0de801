"""Teacher-vs-student report building blocks.

bench (latency harness, hardware record), stats (paired tests), schema (report.json
contract), render (md/html/png/terminal views) and baseline (TF-IDF reference model).
Import the module you need; this package imports nothing heavy on its own.
"""
