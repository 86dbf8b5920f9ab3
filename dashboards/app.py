"""The ftprune dashboard (Streamlit): ``streamlit run dashboards/app.py -- --db URL``, or
``ftprune dashboard --db URL``.

Read-only: the database is opened with :func:`storage.open_reader` (never created, migrated
or written; a stale schema is refused with one line saying to run ``ftprune db upgrade``).
The store is cached per database URL and closed when the cache releases it. The run chosen
at first is the newest that is not a fine-tuning child (a pipeline's main run). The chosen
view is drawn in a fragment that reruns on a timer (live refresh, on by default while a search
is running), so a running search updates without reloading the page.
"""

from __future__ import annotations

import argparse
import sys

import streamlit as st

from dashboards import views
from dashboards.queries import run_table
from storage import StorageError, Store, default_url, open_reader, redact

REFRESH_S = (2, 5, 10, 30, 60)


def database_url(argv: list[str]) -> str:
    """``--db URL`` from the script's arguments, else ``$FTPRUNE_DB``, else the default."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--db")
    known, _ = parser.parse_known_args(argv)
    return known.db or default_url()


@st.cache_resource(show_spinner=False, on_release=lambda store: store.close())
def reader(url: str) -> Store:
    """One read-only store per database URL, shared by every session of this server."""
    return open_reader(url)


def main() -> None:
    st.set_page_config(page_title="ftprune", layout="wide")
    url = database_url(sys.argv[1:])
    try:
        store = reader(url)
        runs = run_table(store)
    except StorageError as exc:
        st.error(str(exc))
        return
    st.sidebar.title("ftprune")
    st.sidebar.caption(f"database: `{redact(url)}`")
    view = st.sidebar.radio("View", list(views.VIEWS), key="view")
    run_id = None
    if not runs.empty:
        labels = {int(r.id): f"{r.name} ({r.status})" for r in runs.itertuples()}
        top_level = runs.index[runs["seed_run"].isna()]  # not a fine-tuning child run
        run_id = st.sidebar.selectbox(
            "Run",
            list(labels),
            format_func=labels.__getitem__,
            index=int(top_level[0]) if len(top_level) else 0,
            key="run",
        )
    running = bool((runs["status"] == "running").any())
    live = st.sidebar.toggle(
        "Live refresh",
        value=running,
        key="live",
        help="Redraw the view on a timer, without reloading the page.",
    )
    every = st.sidebar.select_slider(
        "Every (s)", REFRESH_S, value=5, key="every", disabled=not live
    )
    st.fragment(run_every=every if live else None)(views.VIEWS[view])(store, run_id)


if __name__ == "__main__":  # as Streamlit runs the script
    main()
