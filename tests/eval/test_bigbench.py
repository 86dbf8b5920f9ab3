"""``bigbench:<name>`` against a small tarball laid out like the BIG-bench 1.0.0 sdist: the
real 358 MB release is never downloaded here (pip is replaced where the download path is
tested)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from evaluation import bigbench
from evaluation.bigbench import read_index, resolve_bigbench
from evaluation.tasks import TaskError, resolve_task

TOP = "bigbench-1.0.0/bigbench/benchmark_tasks"
CAUSAL = {
    "name": "causal_judgment",
    "examples": [
        {"input": "Did the fire cause the damage?", "target_scores": {"Yes": 1, "No": 0}},
        {"input": "Did the wind cause the fall?", "target_scores": {"Yes": 0, "No": 1}},
    ],
}
ADDITION = {"examples": [{"input": "1 + 1 =", "target_scores": {"2": 1, "3": 0}}]}


def make_sdist(path: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A gzipped tarball with the release's layout: a JSON task, a task split into two
    subtasks, a programmatic task, files that are not task files, and ``extra`` members."""
    members: dict[str, bytes] = {
        "bigbench-1.0.0/PKG-INFO": b"Name: bigbench\n",
        f"{TOP}/causal_judgment/task.json": json.dumps(CAUSAL).encode(),
        f"{TOP}/causal_judgment/README.md": b"# causal judgment\n",
        f"{TOP}/arithmetic/task.json": json.dumps({"name": "arithmetic"}).encode(),
        f"{TOP}/arithmetic/1_digit_addition/task.json": json.dumps(ADDITION).encode(),
        f"{TOP}/arithmetic/2_digit_addition/task.json": json.dumps(ADDITION).encode(),
        f"{TOP}/boolean_expressions/task.py": b"print('programmatic')\n",
        f"{TOP}/boolean_expressions/README.md": b"# boolean expressions\n",
        **(extra or {}),
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def sdist(tmp_path: Path) -> Path:
    return make_sdist(tmp_path / "bigbench-1.0.0.tar.gz")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "bigbench-1.0.0"


def test_fetch_keeps_only_task_files_and_indexes_them(sdist: Path, cache: Path) -> None:
    path = resolve_bigbench("causal_judgment", cache, progress=False, sdist=sdist)
    assert path == cache / "causal_judgment" / "task.json"
    assert json.loads(path.read_text()) == CAUSAL
    files = sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())
    assert files == [
        "arithmetic/1_digit_addition/task.json",
        "arithmetic/2_digit_addition/task.json",
        "causal_judgment/task.json",
        "index.json",
    ]
    index = read_index(cache)
    assert index is not None
    assert index.subtasks == {
        "arithmetic": ("arithmetic/1_digit_addition", "arithmetic/2_digit_addition")
    }
    assert index.programmatic == ("boolean_expressions",)
    assert sdist.is_file(), "a local tarball is read, never deleted"
    assert sorted(p.name for p in cache.parent.iterdir()) == ["bigbench-1.0.0"]


def test_later_uses_read_the_cache_without_the_tarball(sdist: Path, cache: Path) -> None:
    resolve_bigbench("causal_judgment", cache, progress=False, sdist=sdist)
    sdist.unlink()
    path = resolve_bigbench("arithmetic/2_digit_addition", cache, progress=False, sdist=sdist)
    assert json.loads(path.read_text()) == ADDITION


def test_resolve_task_reads_bigbench_names_through_the_cache(
    sdist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FTPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(bigbench.SDIST_ENV, str(sdist))
    task = resolve_task("bigbench:causal_judgment")
    assert task.name == "causal_judgment"
    assert [example.choices for example in task.examples] == [("Yes", "No"), ("Yes", "No")]
    assert [example.correct for example in task.examples] == [{0}, {1}]
    assert (tmp_path / "cache" / "bigbench-1.0.0" / "index.json").is_file()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("causal_judgement", "close matches: causal_judgment"),
        ("no_such_task_at_all", "is not a task of the BIG-bench 1.0.0 release"),
        ("arithmetic/1_digit_additon", "close matches: arithmetic/1_digit_addition"),
        (
            "arithmetic",
            "split into 2 subtasks; name one: bigbench:arithmetic/1_digit_addition, "
            "bigbench:arithmetic/2_digit_addition",
        ),
        ("boolean_expressions", "programmatic BIG-bench task"),
    ],
)
def test_names_the_release_cannot_serve_are_refused_in_one_line(
    sdist: Path, cache: Path, name: str, message: str
) -> None:
    with pytest.raises(TaskError, match=message) as raised:
        resolve_bigbench(name, cache, progress=False, sdist=sdist)
    assert "\n" not in str(raised.value)


def test_a_misspelt_task_is_refused_before_any_download(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_download(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("downloaded for a name the release does not have")

    monkeypatch.setattr(subprocess, "run", no_download)
    with pytest.raises(TaskError, match="close matches: penguins_in_a_table"):
        resolve_bigbench("penguins_in_table", cache, progress=False)
    assert not cache.parent.exists()


def fake_registry(archive: Path, calls: list[list[str]]) -> Any:
    """``subprocess.run`` as pip would answer ``install --dry-run --report``: the report
    points at ``archive`` (a file:// address, read by the real download path)."""

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        report = Path(command[command.index("--report") + 1])
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        info = {"url": archive.as_uri(), "archive_info": {"hashes": {"sha256": digest}}}
        report.write_text(json.dumps({"install": [{"download_info": info}]}))
        return subprocess.CompletedProcess(command, 0, "", "")

    return run


def test_download_asks_pip_for_the_release_and_deletes_the_tarball(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    archive = make_sdist(tmp_path / "bigbench-1.0.0.tar.gz")
    monkeypatch.delenv(bigbench.SDIST_ENV, raising=False)
    monkeypatch.setattr(subprocess, "run", fake_registry(archive, calls))
    path = resolve_bigbench("causal_judgment", cache, progress=False)
    assert json.loads(path.read_text()) == CAUSAL
    [command] = calls
    assert command[:4] == [sys.executable, "-m", "pip", "install"]
    assert {"--dry-run", "--no-deps"} <= set(command) and command[-1] == "bigbench==1.0.0"
    assert command[command.index("--no-binary") + 1] == ":all:", "the source distribution"
    assert archive.is_file(), "the registry's copy is read, not moved"
    assert sorted(p.name for p in cache.parent.iterdir()) == ["bigbench-1.0.0"]


def test_a_corrupted_download_is_refused_and_leaves_no_cache(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_sdist(tmp_path / "bigbench-1.0.0.tar.gz")
    run = fake_registry(archive, [])

    def tampered(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        result = run(command)
        archive.write_bytes(archive.read_bytes() + b"tampered")
        return result

    monkeypatch.delenv(bigbench.SDIST_ENV, raising=False)
    monkeypatch.setattr(subprocess, "run", tampered)
    with pytest.raises(TaskError, match="does not match its SHA-256"):
        resolve_bigbench("causal_judgment", cache, progress=False)
    assert list(cache.parent.iterdir()) == []


def test_a_failed_download_leaves_no_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_pip(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(
            command,
            1,
            "Looking in indexes: ...\n",
            "ERROR: Could not find a version that satisfies the requirement bigbench==1.0.0 "
            "(from versions: 0.0.1)\nERROR: No matching distribution found for bigbench\n",
        )

    monkeypatch.delenv(bigbench.SDIST_ENV, raising=False)
    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(TaskError) as raised:
        resolve_bigbench("causal_judgment", cache, progress=False)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(
        "cannot download bigbench==1.0.0 from the package registry: "
        "ERROR: No matching distribution found for bigbench"
    )
    assert bigbench.SDIST_ENV in message, "the one line says how the release can be had"
    assert list(cache.parent.iterdir()) == []


def test_a_truncated_tarball_leaves_no_cache(sdist: Path, cache: Path) -> None:
    data = sdist.read_bytes()
    sdist.write_bytes(data[: len(data) // 2])
    with pytest.raises(TaskError, match="not a readable BIG-bench release tarball"):
        resolve_bigbench("causal_judgment", cache, progress=False, sdist=sdist)
    assert list(cache.parent.iterdir()) == []
    resolve_bigbench(
        "causal_judgment", cache, progress=False, sdist=make_sdist(sdist.with_name("whole.tar.gz"))
    )
    assert (cache / "index.json").is_file()


def test_members_outside_the_task_tree_are_never_written(tmp_path: Path, cache: Path) -> None:
    evil = json.dumps(CAUSAL).encode()
    sdist = make_sdist(
        tmp_path / "evil.tar.gz",
        extra={
            f"{TOP}/../task.json": evil,
            f"{TOP}/../../escaped/task.json": evil,
            f"{TOP}/arithmetic/../../../task.json": evil,
        },
    )
    resolve_bigbench("causal_judgment", cache, progress=False, sdist=sdist)
    index = read_index(cache)
    assert index is not None and sorted(index.tasks) == [
        "arithmetic/1_digit_addition",
        "arithmetic/2_digit_addition",
        "causal_judgment",
    ]
    written = {p for p in tmp_path.rglob("task.json")}
    assert written == {cache / name for name in index.tasks.values()}
