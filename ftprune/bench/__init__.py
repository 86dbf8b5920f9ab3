"""Benchmarks behind ``ftprune bench``: library code that times the product and returns rows.

Each module times one part and returns plain rows (lists of dicts) that the command line
prints and writes as JSON; see each module's docstring for its rows.
"""
