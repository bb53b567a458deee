#!/usr/bin/env python
"""What one MetaInit step costs against one training step, for each Hessian-vector product.

MetaInit's step differentiates the gradient quotient, which holds ``H g``: with
``hvp="exact"`` that is a third-order graph, with ``"finite_difference"`` a double backward
through three gradients. This prints, for a CIFAR VGG (the CNN example's ``vgg19_bn`` at a CPU
width) and one batch, the median seconds of a training step (SGD, forward + backward + step)
and of a MetaInit step in each mode, their ratios, measured side by side in one run, and what
the default 500 steps would take. The numbers choose MetaInit's default mode and tell users
its cost (README). A benchmark, not a test.

    python benchmarks/bench_metainit.py --width_mult 0.25 --batch 64 --steps 4 \\
        --out benchmarks/results/metainit_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "examples" / "cnn"))

from cifar_models import build_model  # noqa: E402

from hf_gradinit import MetaInitConfig, metainit  # noqa: E402


def loss_fn(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch).loss


def train_step_seconds(model: nn.Module, batch: dict, repeats: int) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        opt.step()
        times.append(time.perf_counter() - started)
    return times[1:]  # the first is a warm-up


def metainit_step_seconds(build, batch: dict, hvp: str, steps: int) -> tuple[list[float], int]:
    model = build()
    config = MetaInitConfig(steps=steps + 1, hvp=hvp, lr=0.01, show_progress=False)  # type: ignore[arg-type]
    result = metainit(model, [batch], config, loss_fn=loss_fn)
    seconds = [h["seconds"] for h in result.history][1:]
    return seconds, sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg19_bn")
    parser.add_argument("--width_mult", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="measured MetaInit steps per mode (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gq_steps", type=int, default=0,
                        help="also run this many steps of each mode at the default settings and report the gradient"
                        " quotient along the way (how many steps MetaInit needs)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    batch = {
        "pixel_values": torch.randn(args.batch, 3, 32, 32, generator=g),
        "labels": torch.randint(0, 10, (args.batch,), generator=g),
    }

    def build():
        torch.manual_seed(0)
        return build_model(args.model, 10, args.width_mult)

    train = statistics.median(train_step_seconds(build(), batch, args.steps))
    rows = {}
    for hvp in ("exact", "finite_difference"):
        seconds, n_params = metainit_step_seconds(build, batch, hvp, args.steps)
        step = statistics.median(seconds)
        rows[hvp] = {"step_s": step, "ratio_to_train_step": step / train, "default_500_steps_min": 500 * step / 60}
    trajectories = {}
    for hvp in ("exact", "finite_difference") if args.gq_steps else ():
        model = build()
        result = metainit(model, [batch], MetaInitConfig(steps=args.gq_steps, hvp=hvp, show_progress=False),  # type: ignore[arg-type]
                          loss_fn=loss_fn)  # fmt: skip
        gq = [h["gq"] for h in result.history]
        marks = sorted({0, *range(9, len(gq), 10), len(gq) - 1})
        trajectories[hvp] = {"initial_gq": result.initial_gq, "gq": {i + 1: gq[i] for i in marks}}
        print(f"{hvp:>17}: GQ at step " + ", ".join(f"{i + 1}: {gq[i]:.3f}" for i in marks))
    out = {
        "gq_trajectories": trajectories,
        "model": args.model,
        "width_mult": args.width_mult,
        "parameters": n_params,
        "batch": args.batch,
        "threads": args.threads,
        "train_step_s": train,
        "metainit": rows,
        "command": " ".join(["bench_metainit.py", *(argv if argv is not None else sys.argv[1:])]),
        "torch": torch.__version__,
    }
    for hvp, row in rows.items():
        print(f"{hvp:>17}: {row['step_s']:.3f} s a step = {row['ratio_to_train_step']:.1f} training steps;"
              f" 500 steps = {row['default_500_steps_min']:.1f} min")  # fmt: skip
    print(f"training step: {train:.3f} s ({n_params / 1e3:.0f}k parameters, batch {args.batch})")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
