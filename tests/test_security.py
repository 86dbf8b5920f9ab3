"""What ftprune must never expose or execute: database passwords (in output, errors, logs,
stored rows, the dashboard's pages or its server's command line), YAML tags that build
Python objects, code from a model's repository, and pickles posing as checkpoints.

The password tests run against the throwaway PostgreSQL server of tests/storage/postgres.py
with a role that logs in with a password (``db upgrade`` / ``db check`` have their own test
in tests/storage/test_cli_db.py). The dashboard's loopback default is tested in
tests/dashboards/test_cli_dashboard.py.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from typer.testing import CliRunner

from ftprune.cli import app
from tests.dashboards.test_app import _app, _page_text, _show
from tests.storage.conftest import postgres  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/tiny.yaml"
PASSWORD = "pw-Vu27q%hidden"
SECRETS = (PASSWORD, quote(PASSWORD, safe=""))
runner = CliRunner()


def _clean(*texts: str) -> None:
    for text in texts:
        assert not any(secret in text for secret in SECRETS), text[-2000:]


@pytest.fixture(scope="module")
def secret_db(postgres):  # noqa: F811 (the imported fixture)
    """A database owned by a role that logs in with PASSWORD; yields (url, admin URL)."""
    postgres.create_role("ftp_secret_user", PASSWORD)
    postgres.create_database("ftp_secret_runs", owner="ftp_secret_user")
    try:
        yield (
            postgres.url("ftp_secret_runs", user="ftp_secret_user", password=PASSWORD),
            postgres.url("ftp_secret_runs"),
        )
    finally:
        postgres.drop_database("ftp_secret_runs")


def test_passwords_never_reach_output_logs_rows_or_the_dashboard(secret_db, caplog, monkeypatch):
    url, admin = secret_db
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="alembic")
    launched = runner.invoke(
        app, ["search", "launch", "--config", str(TINY), "--run-name", "sec", "--db", url, "-q"]
    )
    assert launched.exit_code == 0, launched.output
    assert "--db postgresql+psycopg://ftp_secret_user:***@127.0.0.1" in launched.output
    outputs = [launched.output]
    for args in (["sec"], ["sec", "--json"], []):
        status = runner.invoke(app, ["search", "status", *args, "--db", url])
        assert status.exit_code == 0 and "sec" in status.output, status.output
        outputs.append(status.output)
    wrong = url.replace(quote(PASSWORD, safe=""), quote(PASSWORD + "-wrong", safe=""))
    for args in (["search", "status", "sec"], ["router", "train", "--run", "sec"]):
        refused = runner.invoke(app, [*args, "--db", wrong])
        assert refused.exit_code == 2 and "password authentication failed" in refused.stderr
        assert len(refused.stderr.splitlines()) == 1
        outputs.append(refused.output)
    assert caplog.text, "nothing was logged: the log check would prove nothing"
    _clean(*outputs, caplog.text)

    # every stored row, the run's config JSON included, read back as text
    with psycopg.connect(admin.replace("postgresql+psycopg", "postgresql")) as connection:
        tables = [
            name
            for (name,) in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        ]
        assert "ftp_runs" in tables
        rows = [
            str(row)
            for table in tables
            for row in connection.execute(f'SELECT t::text FROM "{table}" t')  # noqa: S608
        ]
    assert any("random:llama-tiny" in row for row in rows)  # the run's config is there
    _clean(*rows)

    # every view of the dashboard over that database
    page = _app(url, monkeypatch)
    assert "ftp_secret_user:***@127.0.0.1" in _page_text(page)
    texts = [_page_text(page)]
    from dashboards.views import VIEWS

    for view in VIEWS:
        texts.append(_page_text(_show(page, view)))
    _clean(*texts)


def test_the_dashboard_server_gets_the_url_outside_its_command_line(monkeypatch):
    from ftprune import cli_dashboard

    url = f"postgresql+psycopg://ftp:{quote(PASSWORD, safe='')}@127.0.0.1:5432/ftp"
    _clean(" ".join(cli_dashboard.streamlit_command("127.0.0.1", 8501)))
    seen: dict[str, object] = {}

    class Server:
        def __init__(self, command: list[str], env: dict[str, str], **_options: object) -> None:
            seen.update(command=command, env=env)

        def wait(self, timeout: float | None = None) -> int:
            return 0

    monkeypatch.setattr(cli_dashboard.subprocess, "Popen", Server)
    assert cli_dashboard.serve(url, "127.0.0.1", 8501) == 0
    _clean(" ".join(seen["command"]))  # type: ignore[arg-type]
    assert seen["env"]["FTPRUNE_DB"] == url  # type: ignore[index]


# -- YAML ------------------------------------------------------------------------------------


def test_yaml_that_builds_python_objects_is_refused_with_one_line(tmp_path, monkeypatch):
    marker = tmp_path / "executed"
    payload = f"!!python/object/apply:os.system ['touch {marker}']\n"
    config = tmp_path / "evil.yaml"
    config.write_text(f"model: {payload}")
    task = tmp_path / "evil_task.yaml"
    task.write_text(f"task: {payload}")
    monkeypatch.chdir(tmp_path)
    for args in (
        ["search", "launch", "--config", str(config)],
        ["pipeline", "--config", str(config)],
        ["eval", "--model", "random:llama-tiny", "--sparsity", "0.3", "--tasks", str(task)],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and re.search(
            r"not (a )?valid (task )?YAML .*python/object", lines[0]
        ), lines
    assert not marker.exists()


def test_no_module_loads_yaml_or_tensors_unsafely():
    unsafe = re.compile(
        r"yaml\.(unsafe_load|full_load|load_all)\(|Loader=yaml\.(Loader|FullLoader|UnsafeLoader)"
        r"|\btorch\.load\(|\bpickle\.|import pickle|\bdill\b|cloudpickle\.load"
    )
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in ("router", "workers", "search", "storage", "dashboards", "ftprune")
        for path in sorted((ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if unsafe.search(line)
    ]
    assert found == []
    # the one custom YAML loader (lm-eval task files) derives from SafeLoader
    lmeval = (ROOT / "evaluation/lmeval.py").read_text()
    assert lmeval.count("yaml.load(") == 1 and "class Loader(yaml.SafeLoader)" in lmeval


# -- remote code -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_model(tmp_path_factory) -> Path:
    """random:llama-tiny saved as a local Hugging Face directory."""
    from router import load_model

    directory = tmp_path_factory.mktemp("local-model")
    model, tokenizer = load_model("random:llama-tiny")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_models_tokenizers_and_configs_load_without_remote_code(local_model, monkeypatch):
    import transformers

    from router.loading import load_model, load_tokenizer, model_config

    calls: list[tuple[str, dict]] = []

    class Spy:  # stands for an Auto class where router.loading looks it up
        def __init__(self, real: Any) -> None:
            self.real = real

        def from_pretrained(self, *args, **kwargs):
            calls.append((self.real.__name__, kwargs))
            return self.real.from_pretrained(*args, **kwargs)

    for name in ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM"):
        monkeypatch.setattr(transformers, name, Spy(getattr(transformers, name)))
    load_model(str(local_model))
    load_tokenizer(str(local_model))
    model_config(str(local_model))
    assert {name for name, _ in calls} >= {"AutoConfig", "AutoTokenizer", "AutoModelForCausalLM"}
    assert all(kwargs.get("trust_remote_code") is False for _, kwargs in calls), calls


def test_a_model_that_needs_remote_code_is_refused_unrun(local_model, tmp_path, monkeypatch):
    marker = tmp_path / "executed"
    evil = tmp_path / "evil-model"
    evil.mkdir()
    config = json.loads((local_model / "config.json").read_text())
    config.update(
        model_type="evil",
        architectures=["EvilForCausalLM"],
        auto_map={
            "AutoConfig": "evil.EvilConfig",
            "AutoModelForCausalLM": "evil.EvilForCausalLM",
        },
    )
    (evil / "config.json").write_text(json.dumps(config))
    (evil / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    for args in (
        ["eval", "--model", str(evil), "--sparsity", "0.3"],
        ["bench", "routing", "--model", str(evil), "--seq-len", "16"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and str(evil) in lines[0], lines
    assert not marker.exists()


# -- checkpoints -----------------------------------------------------------------------------


class _Payload:
    """Unpickling this writes ``marker``: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_router_checkpoints_never_unpickle(tmp_path, monkeypatch):
    import torch

    from router.checkpoint import CheckpointError, load_routed, load_router, save_router
    from router.dynamic import DynamicRouter

    marker = tmp_path / "unpickled"
    poison = pickle.dumps(_Payload(marker))
    saved = save_router(tmp_path / "ckpt", DynamicRouter(), [0.3] * 4, "random:llama-tiny")
    for name in ("router.pt", "router.bin", "pytorch_model.bin", "model.pkl"):
        (saved / name).write_bytes(poison)
    only_pickles = tmp_path / "pickles"
    only_pickles.mkdir()
    (only_pickles / "router.pt").write_bytes(poison)

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    load_router(saved)
    load_routed(saved)
    with pytest.raises(CheckpointError, match="not a router checkpoint"):
        load_router(only_pickles)
    result = runner.invoke(app, ["eval", "--export", str(only_pickles)])
    assert result.exit_code == 2 and "not a router checkpoint" in result.stderr
    assert not marker.exists()
