"""The application layer: ftprune's commands and the drivers that combine several packages
(FTP's pipeline, the benchmarks, evaluation, tuning, the dashboard launcher).

Nothing below this package imports it: ``router`` < ``workers`` < ``search`` < ``ftprune``,
with ``storage`` beside ``search`` and ``dashboards`` reading ``storage`` (enforced by
``tests/test_layers.py``).
"""
