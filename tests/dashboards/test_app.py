"""Every view of the Streamlit app, run headlessly (``AppTest``) on the tiny pipeline's
database, on an empty database and on a stale one; the page loads leave the database file
byte for byte as it was."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from dashboards.app import database_url
from dashboards.queries import run_table
from dashboards.views import NO_RUNS, VIEWS
from storage import Store, open_reader
from tests.storage.test_reader import _database_behind

APP = Path(__file__).resolve().parents[2] / "dashboards/app.py"

# view -> (charts drawn for the pipeline's main run, text that must be on the page)
EXPECTED = {
    "Overview": (3, "Final schedule per block"),
    "Runs": (0, "broken failed: RuntimeError: every Ray worker died"),
    "Convergence": (1, "Per generation and stage"),
    "Schedules": (2, "Best schedule per generation"),
    "Population": (1, "Population"),
    "Compare runs": (2, "Best fitness so far"),
    "Routers": (1, "round-1"),
    "Tuning": (3, "tune-tiny-pareto"),
    "Evaluation": (2, "routing"),
}


def _app(url: str, monkeypatch) -> AppTest:
    monkeypatch.setenv("FTPRUNE_DB", url)
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def _show(app: AppTest, view: str, run_id: int | None = None) -> AppTest:
    if run_id is not None:
        app.sidebar.selectbox(key="run").set_value(run_id)
    app.sidebar.radio(key="view").set_value(view).run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def _run_ids(url: str) -> dict[str, int]:
    with open_reader(url) as store:
        runs = run_table(store)
    return dict(zip(runs["name"], runs["id"].tolist(), strict=True))


def _page_text(app: AppTest) -> str:
    parts = [
        e.value
        for kind in ("markdown", "caption", "info", "error", "header", "subheader")
        for e in getattr(app, kind)
    ]
    parts += [f"{m.label} {m.value}" for m in app.metric]
    parts += [str(v) for frame in app.dataframe for v in frame.value.to_numpy().ravel()]
    parts += [e.label for e in app.expander] + [e.value for e in app.sidebar.caption]
    return "\n".join(map(str, parts))


def _charts(app: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in app.get("plotly_chart")]


def _digest(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def test_the_database_comes_from_the_arguments_else_the_environment(monkeypatch):
    monkeypatch.setenv("FTPRUNE_DB", "sqlite:///from-env.db")
    assert database_url(["--db", "sqlite:///given.db"]) == "sqlite:///given.db"
    assert database_url(["-q", "tests/dashboards"]) == "sqlite:///from-env.db"


def test_every_view_renders_the_pipeline_run(filled, monkeypatch):
    assert list(EXPECTED) == list(VIEWS)
    app = _app(filled.url, monkeypatch)
    ids = _run_ids(filled.url)
    # first choice: the newest run that is not a fine-tuning child
    assert app.sidebar.selectbox(key="run").value == ids["live"]
    assert app.sidebar.toggle(key="live").value  # a search is running: live refresh is on
    for view, (charts, text) in EXPECTED.items():
        _show(app, view, ids["tiny"])
        drawn = _charts(app)
        assert len(drawn) == charts, view
        assert all(chart["data"] for chart in drawn), view  # no empty-state figure
        assert text in _page_text(app), view
    _show(app, "Convergence")
    assert "tiny" in _page_text(app) and "finished" in _page_text(app)


def test_a_failed_and_a_running_run_say_so(filled, monkeypatch):
    app = _app(filled.url, monkeypatch)
    ids = _run_ids(filled.url)
    _show(app, "Overview", ids["broken"])
    assert [e.value for e in app.error] == ["broken failed: RuntimeError: every Ray worker died"]
    assert all(not chart["data"] for chart in _charts(app))  # notes, not errors
    _show(app, "Convergence", ids["live"])
    assert any("live is running" in i.value for i in app.info)
    (chart,) = _charts(app)
    assert [t["name"] for t in chart["data"]][-1] == "best so far"
    _show(app, "Routers", ids["live"])
    assert any("No router trained" in i.value for i in app.info)


def test_an_empty_database_shows_what_to_do_in_every_view(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    Store(url).close()
    app = _app(url, monkeypatch)
    assert not app.sidebar.toggle(key="live").value
    for view in VIEWS:
        _show(app, view)
        infos = [i.value for i in app.info]
        assert infos, view
        if view in ("Tuning", "Evaluation"):
            assert any("ftprune tune" in i or "ftprune eval" in i for i in infos), view
        else:
            assert infos == [NO_RUNS], view


def test_a_stale_database_gets_one_line_and_is_left_alone(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    _database_behind(f"sqlite:///{path}")
    before = _digest(path)
    app = _app(f"sqlite:///{path}", monkeypatch)
    (error,) = app.error
    assert "ftprune db upgrade" in error.value and "\n" not in error.value
    assert not app.sidebar.radio and _digest(path) == before


def test_page_loads_never_change_the_database(filled, monkeypatch):
    before = _digest(filled.path)
    ids = _run_ids(filled.url)
    for run in ("tiny", "broken", "live"):
        app = _app(filled.url, monkeypatch)
        for view in VIEWS:
            _show(app, view, ids[run])
    assert _digest(filled.path) == before
