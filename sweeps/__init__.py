"""Sweeps: specs, cells, the trial pipeline, backends (serial, Ray), the Parquet store and the CLI.

Importing this package imports neither torch nor Ray, so `analysis` can use `sweeps.schema`.
"""
