"""``workers.heap``: the tuned heap keeps freed activations instead of faulting them back in."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Allocates, fills and frees the same 48 MiB tensor a few times (what every block of a
# CPU forward does with its activations), then reports the minor page faults of the last
# rounds, the heap mode, and whether importing workers.heap alone pulled in torch.
PROBE = """
import json, resource, sys
from workers.heap import heap_mode, tune_heap
light = 'torch' not in sys.modules
mode = tune_heap() if sys.argv[1] == 'tune' else heap_mode()
import torch
def round_trip():
    torch.empty(12 << 20).fill_(1.0)
for _ in range(10):  # the heap settles within a few rounds
    round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    round_trip()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"mode": mode, "faults": faults, "light": light}))
"""


def _probe(action: str, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, action],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_tuned_heap_reuses_freed_memory_and_default_faults_it_back_in():
    tuned, plain = _probe("tune"), _probe("leave")
    assert tuned["light"] and plain["light"]
    assert (tuned["mode"], plain["mode"]) == ("tuned", "default")
    assert tuned["faults"] < 100
    # 5 rounds x 48 MiB in 4 KiB pages: glibc maps and unmaps every round.
    assert plain["faults"] > 5 * 10_000


def test_environment_keeps_glibc_defaults():
    result = _probe("tune", FTPRUNE_HEAP="default")
    assert result["mode"] == "default"
    assert result["faults"] > 5 * 10_000
