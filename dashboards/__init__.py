"""Dashboards: the read-only Streamlit app over ftprune's database (``ftprune dashboard``).

Three layers, the first two testable without a browser: :mod:`dashboards.queries` (pandas
frames composed from :mod:`storage.queries`, plus Optuna's studies in the same database),
:mod:`dashboards.figures` (pure Plotly figures) and the Streamlit layer
(:mod:`dashboards.app`, :mod:`dashboards.views`).
"""
