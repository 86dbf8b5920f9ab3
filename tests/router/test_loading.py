"""Converting a GGUF to its cached safetensors copy: processes that need the same copy at
once (a pool's workers starting together) convert it once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import router.loading as loading


def test_workers_starting_together_convert_a_gguf_once(tmp_path, monkeypatch):
    monkeypatch.setenv("FTPRUNE_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    calls: list[Path] = []

    def convert(source: Path, target: Path) -> None:
        calls.append(source)
        time.sleep(0.5)  # the others reach the lock meanwhile
        target.mkdir()
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(loading, "_convert", convert)
    target = loading.needs_conversion(str(gguf))
    assert target is not None and not target.exists()
    copies: list[Path] = []
    workers = [
        threading.Thread(target=lambda: copies.append(loading._converted_gguf(gguf)))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert calls == [gguf] and copies == [target] * 3
    assert loading.needs_conversion(str(gguf)) is None
    assert loading.needs_conversion("random:llama-tiny") is None
