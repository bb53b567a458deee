"""Small helpers for experiment scripts: the machine a result was measured on, mean ± std over
seeds, and JSON-lines result files that several runs may append to at once.

>>> mean_std([1.0, 2.0, 3.0])
'2.00 ± 1.00'
>>> mean_std([float("nan")])
'failed'
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

_APPEND_LOCK = threading.Lock()


def machine_description() -> str:
    """CPU model, core count, GPU (if any) and torch version, for a results file."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cpus{gpu}, torch {torch.__version__}"


def mean_std(values: Iterable[float], digits: int = 2) -> str:
    """``"mean ± std"`` over the finite values (one value alone; ``"failed"`` for none)."""
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not finite:
        return "failed"
    if len(finite) == 1:
        return f"{finite[0]:.{digits}f}"
    return f"{statistics.fmean(finite):.{digits}f} ± {statistics.stdev(finite):.{digits}f}"


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a JSON-lines file (none if it does not exist). A last line that does not
    parse is left out: another process (sweeps side by side on one GPU) may be writing it."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines[:-1]]
    if lines:
        try:
            records.append(json.loads(lines[-1]))
        except json.JSONDecodeError:
            pass
    return records


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one record as one line; threads of one sweep never interleave their lines."""
    with _APPEND_LOCK, open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")


def run_logged(
    cmd: list[str], log_path: str | Path, *, threads: int | None = None, pythonpath: str | None = None
) -> int:
    """Run ``cmd`` with its output in ``log_path``; ``threads`` sets its OMP/MKL threads (several
    runs side by side on one CPU), ``pythonpath`` is put first on its ``PYTHONPATH``."""
    import subprocess

    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    with open(log_path, "w") as log:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode


def run_all(items: list[Any], fn: Any, jobs: int = 1) -> None:
    """``fn(i, item)`` for every item, ``jobs`` at a time (threads; each item is its own process)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(fn, i, item) for i, item in enumerate(items, 1)]:
            future.result()


def sweep_parser(doc: str, argv: list[str] | None) -> tuple[Any, list[str], list[str]]:
    """An ``argparse`` parser with the options every sweep script has (``--out``, ``--jobs``,
    ``--threads_per_run``, ``--report_only``), the sweep's own arguments, and those after
    ``--``, which go to every run unchanged."""
    import argparse
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    own, passthrough = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for results.jsonl, the table, plots, runs")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--threads_per_run", type=int, default=None, help="OMP/MKL threads of each run")
    parser.add_argument("--report_only", action="store_true", help="run nothing: rewrite table and plots")
    parser.add_argument(
        "--with_records", nargs="+", type=Path, default=[], metavar="JSONL",
        help="results.jsonl files of other sweeps (same recipe) whose rows the table and plots show beside "
        "this sweep's; nothing of theirs is run, and this sweep's record of a key wins",
    )  # fmt: skip
    return parser, own, passthrough


def run_recorded(
    fields: dict[str, Any],
    cmd: list[str],
    out_dir: Path,
    log_path: Path,
    kept: Iterable[str],
    *,
    threads: int | None = None,
    pythonpath: str | None = None,
) -> dict[str, Any]:
    """Run one experiment script and return its record: ``fields``, the command, return code and
    wall time, and the ``kept`` entries of the ``all_results.json`` it wrote to ``out_dir``.
    ``out_dir`` is the sweep's own: a folder there without checkpoints (a run killed early) is
    removed first; one with checkpoints is left for the script to resume from."""
    import shutil
    import time

    out_dir = Path(out_dir)
    if out_dir.is_dir() and not any(out_dir.glob("checkpoint-*")):
        # A run stopped before its first checkpoint left only a partial folder, which the
        # scripts (as upstream's) refuse to train into: start it again from scratch.
        shutil.rmtree(out_dir)
    started = time.time()
    code = run_logged(cmd, log_path, threads=threads, pythonpath=pythonpath)
    record: dict[str, Any] = {**fields, "command": " ".join(cmd[1:]), "returncode": code}
    record["wall_time_s"] = time.time() - started
    results_file = Path(out_dir) / "all_results.json"
    if code == 0 and results_file.exists():
        metrics = json.loads(results_file.read_text())
        record.update({k: metrics.get(k) for k in kept})
    return record


def run_sweep(
    plan: list[Any],
    execute: Any,
    describe: Any,
    results_path: Path,
    *,
    jobs: int,
    report_only: bool,
    with_records: Iterable[str | Path] = (),
) -> list[dict[str, Any]]:
    """Run the items of ``plan`` (each with a ``key``; its log in ``logs/<key>.log``) not yet in
    ``results_path``, ``jobs`` at a time, appending ``execute(item)``'s record as each finishes
    and printing ``describe(record)``; return the newest record of every key in the file. Running
    the same plan again resumes a half-done sweep: a run that was killed by a signal (the
    session ending under it: a negative return code) counts as not done and runs again, and a
    run that saves checkpoints goes on from its last one. Records read from ``with_records``
    (other sweeps' files) come first in the returned list, for tables that combine sweeps."""
    done = {r["key"] for r in read_jsonl(results_path) if r.get("returncode", 0) >= 0}
    todo = [] if report_only else [item for item in plan if item.key not in done]
    print(f"{len(done)} runs already done, {len(todo)} to go", flush=True)

    def one(i: int, item: Any) -> None:
        record = execute(item)
        append_jsonl(results_path, record)
        status = "" if record["returncode"] == 0 else f" FAILED (see logs/{item.key}.log)"
        print(f"[{i}/{len(todo)}] {item.key}: {describe(record)}, {record['wall_time_s']:.0f}s{status}", flush=True)

    run_all(todo, one, jobs)
    others = [r for path in with_records for r in read_jsonl(path)]
    return list({r["key"]: r for r in [*others, *read_jsonl(results_path)]}.values())
