"""The reliability suites behind `ops/chaos` and `ops/load`.

docs/RELIABILITY.md holds their latest figures.
"""
