"""How long each row of the bad-input table (tests/bad_input_table.py) takes to answer.

Every row runs as a fresh process (``python -m ftprune.cli ...``), as a user's command would,
on its own copy of the row's starting database; the time is wall-clock from start to exit.
``ftprune --help`` is timed the same way, several times, as the floor a trivial command
pays (Python and the CLI's own imports). The report lists each row's time, its exit
status, and whether it answered as the table expects (exit 2, one ``error:`` line), then
the rows over the limit (default 2 s).

    .venv/bin/python scripts/bad_input_times.py [--limit 2.0] [--json OUT] [--only SUBSTRING]

Run it on an idle machine: the times are the machine's, whatever else runs beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.bad_input_table import (  # noqa: E402 (the repository root is on the path now)
    CASES,
    Case,
    build_databases,
    build_inputs,
    closed_url,
    command_line,
)


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int, str]:
    """(seconds, exit status, stderr) of ``python -m ftprune.cli ARGS``."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ftprune.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return time.perf_counter() - started, done.returncode, done.stderr


def run_row(case: Case, root: Path, inputs: Path, databases: dict[str, bytes], closed: str) -> dict:
    """Time one row in a directory of its own; the row's result as a dict."""
    work = Path(tempfile.mkdtemp(dir=root))
    path = work / "ftprune.db"
    if case.db != "none":
        path.write_bytes(databases[case.db])
    url = f"sqlite:///{path}"
    seconds, code, err = timed(
        command_line(case, url, inputs, closed), work, {**os.environ, "FTPRUNE_DB": url}
    )
    lines = err.strip().splitlines()
    answered = code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    return {"row": case.name, "seconds": seconds, "exit": code, "as_expected": answered}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=float, default=2.0, help="seconds a row may take")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--only", default="", help="rows whose name holds this")
    parser.add_argument("--help-runs", type=int, default=5, help="timed `ftprune --help` runs")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ftprune-bad-input-") as tmp:
        root = Path(tmp)
        inputs = build_inputs(Path(tempfile.mkdtemp(dir=root)))
        databases = build_databases(Path(tempfile.mkdtemp(dir=root)))
        closed = closed_url()
        env = dict(os.environ)
        floor = [timed(["--help"], root, env)[0] for _ in range(options.help_runs)]
        rows = [
            run_row(case, root, inputs, databases, closed)
            for case in CASES
            if options.only in case.name
        ]
    width = max(len(r["row"]) for r in rows)
    for r in rows:
        flag = "" if r["as_expected"] else f"  (exit {r['exit']}: not as the table expects)"
        print(f"{r['row']:<{width}}  {r['seconds']:6.2f} s{flag}")
    times = [r["seconds"] for r in rows]
    slow = [r for r in rows if r["seconds"] > options.limit]
    print(
        f"\n{len(rows)} rows: median {statistics.median(times):.2f} s, max {max(times):.2f} s; "
        f"`ftprune --help` median {statistics.median(floor):.2f} s "
        f"(min {min(floor):.2f}); 1-minute load average {os.getloadavg()[0]:.2f}"
    )
    print(f"rows over {options.limit:g} s: {len(slow)}")
    for r in sorted(slow, key=lambda r: -r["seconds"]):
        print(f"  {r['row']}: {r['seconds']:.2f} s")
    if options.json is not None:
        summary = {"help_seconds": floor, "limit_s": options.limit, "rows": rows}
        options.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
