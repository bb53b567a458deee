#!/usr/bin/env python
"""How long the example scripts take to answer ``--help`` and a bad option, against the floor
that no script built on ``HfArgumentParser(TrainingArguments, ...)`` can go below: importing
``transformers.training_args`` (which imports torch).

    python benchmarks/bench_startup.py --repeats 5 --out benchmarks/results/startup_cpu.json

Each command runs ``--repeats`` times in a fresh interpreter, interleaved, so a busy machine
slows every row alike; the median wall time and its ratio to the floor are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRANSLATION = str(REPO / "examples" / "translation" / "run_translation.py")
CIFAR = str(REPO / "examples" / "cnn" / "train_cifar.py")

COMMANDS: dict[str, list[str]] = {
    "floor: import transformers.training_args": ["-c", "import transformers.training_args"],
    "import torch": ["-c", "import torch"],
    "run_translation.py --help": [TRANSLATION, "--help"],
    "run_translation.py --gradinit_iters 0": [TRANSLATION, "--model_init", "gradinit", "--gradinit_iters", "0",
                                              "--output_dir", "/tmp/bench_startup"],
    "train_cifar.py --help": [CIFAR, "--help"],
    "train_cifar.py --model vgg12_bn": [CIFAR, "--model", "vgg12_bn", "--output_dir", "/tmp/bench_startup"],
    "train_cifar.py --gradinit_lr -1": [CIFAR, "--model_init", "gradinit", "--gradinit_lr", "-1",
                                        "--output_dir", "/tmp/bench_startup"],
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the measured rows as JSON here")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, argv in COMMANDS.items():
            start = time.perf_counter()
            done = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
            seconds[name].append(time.perf_counter() - start)
            if name.startswith(("run_", "train_")) and "--help" not in argv and done.returncode != 2:
                raise SystemExit(f"{name}: expected exit status 2, got {done.returncode}:\n{done.stderr[-500:]}")
    floor = statistics.median(seconds["floor: import transformers.training_args"])
    rows = [{"command": n, "median_s": statistics.median(s), "ratio_to_floor": statistics.median(s) / floor,
             "runs_s": s} for n, s in seconds.items()]  # fmt: skip
    print(f"{'command':45s} {'median s':>9s} {'x floor':>8s}")
    for r in rows:
        print(f"{r['command']:45s} {r['median_s']:9.2f} {r['ratio_to_floor']:8.2f}")
    if args.out:
        import torch
        import transformers

        args.out.write_text(json.dumps({
            "command": " ".join(["python", *sys.argv]), "machine": f"{platform.processor() or platform.machine()},"
            f" {platform.system()}, python {platform.python_version()}, torch {torch.__version__},"
            f" transformers {transformers.__version__}", "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_average_1min_at_end": os.getloadavg()[0], "cpus": os.cpu_count(), "rows": rows,
        }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
