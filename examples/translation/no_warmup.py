#!/usr/bin/env python
"""The paper's no-warmup comparison in one harness and one recipe: initialisations x learning
rates (Adam) x learning rates and momenta (SGD) x seeds, each a ``run_translation.py`` run.

A variant is written ``[BASE/]INIT[+warmup]``: ``BASE`` is ``--base_init`` (``model``, the
default: transformers' N(0, 0.02); ``fairseq``: fairseq's exact init; ``xavier``: Xavier
everywhere), ``INIT`` is ``--model_init`` (any registered initialiser), ``+warmup`` adds
``--warmup`` steps of warmup: linear (``--warmup_scheduler linear``, the schedule of the run)
or fairseq's inverse square root (``--warmup_scheduler inverse_sqrt``: linear to the peak, then
``lr * sqrt(warmup / step)``, the usual Post-LN baseline with 4,000 updates).
The default variants are ``default+warmup``, ``default``, ``gradinit`` and every
other registered initialiser, all without warmup unless marked. A variant may end in
``@ABLATION``, one of ``ABLATIONS`` below (e.g. ``fairseq/gradinit@floor0.1``): the named
GradInit options are added to that variant's runs only, so ablations share one results file
and one table with the rows they are compared against.

Every finished run is appended to ``results.jsonl`` in ``--out``; running the same command
again skips them (a half-done sweep resumes). Then ``results.md`` (mean +- std over seeds)
and ``bleu_vs_lr.png`` / ``loss_curves.png`` are written from everything in the file.

    python examples/translation/no_warmup.py --out runs/no_warmup \\
        --data_dir ../shared/data/multi30k/raw --validation_split val --test_split test_2016_flickr \\
        --adam_lrs 1e-3 5e-3 --seeds 0 1 --warmup 400 -- --max_steps 3000 --config_name post_ln_small

Arguments after ``--`` go to every ``run_translation.py`` run unchanged. ``--jobs N`` runs N at
once (on one GPU, or on a many-core CPU with ``--threads_per_run``); each run still seeds itself,
so the results do not depend on N.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE.parent / "common"))  # reporting, shared by the examples

from reporting import mean_std, run_recorded, run_sweep, sweep_parser  # noqa: E402

BASES = ("model", "fairseq", "xavier")

# Each ablation changes one thing about GradInit, to find which part of it decides the outcome.
ABLATIONS: dict[str, list[str]] = {
    # the lower bound on scales (the paper's 0.01) raised, so no tensor can be nearly switched off
    "floor0.1": ["--gradinit_min_scale", "0.1", "--gradinit_norm_min_scale", "0.1"],
    # only the objective: the gradient-norm constraint never binds
    "objective_only": ["--gradinit_gamma", "1e12"],
    # the authors' gamma for an SGD target on CIFAR (on ||g||_2): the translation recipe's 1000 is
    # meant for Adam's ||g||_1 and never binds on an SGD target's ||g||_2 of a few units
    "gamma1": ["--gradinit_gamma", "1"],
    # only the constraint: every iteration is a step that lowers the gradient norm
    "constraint_only": ["--gradinit_gamma", "1e-9"],
    # the authors' look-ahead for the tied decoder embedding (moves only its input role)
    "input_only": ["--gradinit_tied_lookahead", "input_only"],
    # exact Hessian-vector products instead of the finite difference
    "exact_hvp": ["--gradinit_hvp", "exact"],
    # the decoder's value/output projections keep their initial scale (the tensors the
    # large-step regime switched off), to test whether GradInit's solution fails through them
    "exclude_dec_vo": ["--gradinit_exclude", r"decoder\.layers\.\d+\.(self_attn|encoder_attn)\.(v_proj|out_proj)\."],
}


@dataclass(frozen=True)
class Run:
    variant: str
    optim: str
    lr: float
    momentum: float | None
    seed: int

    @property
    def key(self) -> str:
        m = "" if self.momentum is None else f"_m{self.momentum:g}"
        return f"{self.variant.replace('/', '-')}_{self.optim}_lr{self.lr:g}{m}_s{self.seed}"

    def parts(self) -> tuple[str, str, bool]:
        name = self.variant.split("@", 1)[0]
        name, warmup = (name[: -len("+warmup")], True) if name.endswith("+warmup") else (name, False)
        base, init = name.split("/", 1) if "/" in name else ("model", name)
        return base, init, warmup

    @property
    def ablation(self) -> str | None:
        return self.variant.split("@", 1)[1] if "@" in self.variant else None


def default_variants() -> list[str]:
    from hf_gradinit import available_initializers

    others = [n for n in available_initializers() if n not in ("default", "gradinit")]
    return ["default+warmup", "default", "gradinit", *others]


def plan(args: argparse.Namespace) -> list[Run]:
    runs = []
    for variant in args.variants:
        for seed in args.seeds:
            runs += [Run(variant, "adam", lr, None, seed) for lr in args.adam_lrs]
            runs += [Run(variant, "sgd", lr, m, seed) for lr in args.sgd_lrs for m in args.momenta]
    return runs


def command(run: Run, args: argparse.Namespace, out_dir: Path) -> list[str]:
    base, init, warmup = run.parts()
    cmd = [
        sys.executable, str(HERE / "run_translation.py"),
        "--output_dir", str(out_dir), "--seed", str(run.seed), "--learning_rate", f"{run.lr:g}",
        "--base_init", base, "--model_init", init, "--warmup_steps", str(args.warmup if warmup else 0),
        "--disable_tqdm", "true", "--logging_steps", str(args.logging_steps),
    ]  # fmt: skip
    if warmup and args.warmup_scheduler == "inverse_sqrt":
        cmd += ["--lr_scheduler_type", "inverse_sqrt"]
    if run.optim == "sgd":
        cmd += ["--optim", "sgd", "--optim_args", f"momentum={run.momentum:g}"]
    else:
        cmd += ["--optim", "adamw_torch"]
    return cmd + list(args.run_args) + ABLATIONS.get(run.ablation or "", [])


KEPT = ("eval_bleu", "predict_bleu", "eval_distinct", "predict_distinct", "train_loss", "eval_loss",
        "init_seconds", "init_fraction_of_train_runtime", "machine", "global_step", "time_limited")  # fmt: skip


def execute(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    out_dir = args.out / "runs" / run.key
    cmd = command(run, args, out_dir)
    log = args.out / "logs" / f"{run.key}.log"
    record = run_recorded({**asdict(run), "key": run.key}, cmd, out_dir, log, KEPT,
                          threads=args.threads_per_run, pythonpath=str(REPO))  # fmt: skip
    if record["returncode"] == 0 and (out_dir / "all_results.json").exists():
        state_file = out_dir / "trainer_state.json"
        history = json.loads(state_file.read_text())["log_history"] if state_file.exists() else []
        record["loss_curve"] = [[h["step"], h["loss"]] for h in history if "loss" in h and "step" in h]
    base, init, warmup = run.parts()
    record.update(base_init=base, model_init=init, warmup=args.warmup if warmup else 0,
                  warmup_scheduler=args.warmup_scheduler if warmup else None, ablation=run.ablation)  # fmt: skip
    return record


def bleu_of(record: dict[str, Any]) -> float:
    value = record.get("predict_bleu", record.get("eval_bleu"))
    return float("nan") if value is None else float(value)


def write_table(records: list[dict[str, Any]], path: Path) -> None:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["optim"], r["momentum"], r["lr"], r["variant"])].append(r)
    settings = sorted({(o, m, lr) for o, m, lr, _ in groups}, key=lambda s: (s[0], s[1] or 0, s[2]))
    variants = list(dict.fromkeys(r["variant"] for r in records))
    lines = [
        "BLEU on the test split (validation if none), mean ± std over seeds; final training loss in brackets.",
        "",
        "| optimizer | lr | " + " | ".join(variants) + " |",
        "|---|---|" + "---|" * len(variants),
    ]
    for optim, momentum, lr in settings:
        label = optim if momentum is None else f"sgd (momentum {momentum:g})"
        cells = []
        for v in variants:
            rs = groups.get((optim, momentum, lr, v), [])
            if not rs:
                cells.append("")
                continue
            losses = [r["loss_curve"][-1][1] for r in rs if r.get("loss_curve")]
            diverged = sum(finite_part(r["loss_curve"])[1] for r in rs if r.get("loss_curve"))
            loss = f" [{statistics.fmean(losses):.2f}]" if losses and not diverged else ""
            loss = f" [diverged in {diverged} of {len(losses)}]" if diverged else loss
            measured = [r for r in rs if r["returncode"] != 0 or not math.isnan(bleu_of(r))]
            bleu = mean_std([bleu_of(r) for r in rs]) if measured else "no BLEU asked"
            cells.append(f"{bleu}{loss} (n={len(rs)})")
        lines.append(f"| {label} | {lr:g} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def finite_part(curve: list[list[float]]) -> tuple[list[list[float]], bool]:
    """The loss curve up to where the run diverged, and whether it did: the Trainer logs a NaN/inf
    loss as 0.0 (``logging_nan_inf_filter``), which a label-smoothed loss never is."""
    for i, (_, loss) in enumerate(curve):
        if loss == 0.0 or not math.isfinite(loss):
            return curve[:i], True
    return curve, False


def write_plots(records: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    optims = sorted({(r["optim"], r["momentum"]) for r in records}, key=lambda s: (s[0], s[1] or 0))
    fig, axes = plt.subplots(1, len(optims), figsize=(5.5 * len(optims), 4), squeeze=False)
    for ax, (optim, momentum) in zip(axes[0], optims, strict=True):
        for variant in dict.fromkeys(r["variant"] for r in records):
            rs = [r for r in records if r["variant"] == variant and r["optim"] == optim and r["momentum"] == momentum]
            lrs = sorted({r["lr"] for r in rs})
            means = [
                statistics.fmean([bleu_of(r) if not math.isnan(bleu_of(r)) else 0.0 for r in rs if r["lr"] == lr])
                for lr in lrs
            ]
            ax.plot(lrs, means, marker="o", label=variant)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("BLEU")
        ax.set_title(optim if momentum is None else f"SGD, momentum {momentum:g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "bleu_vs_lr.png", dpi=120)
    plt.close(fig)

    settings = sorted({(r["optim"], r["momentum"], r["lr"]) for r in records}, key=lambda s: (s[0], s[1] or 0, s[2]))
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 3.8), squeeze=False)
    for ax, (optim, momentum, lr) in zip(axes[0], settings, strict=True):
        plotted = []
        for i, variant in enumerate(dict.fromkeys(r["variant"] for r in records)):
            for j, r in enumerate(
                r
                for r in records
                if (r["variant"], r["optim"], r["momentum"], r["lr"]) == (variant, optim, momentum, lr)
            ):
                curve, diverged = finite_part(r.get("loss_curve") or [])
                if curve:
                    steps, losses = zip(*curve, strict=True)
                    ax.plot(steps, losses, color=f"C{i}", alpha=0.8, label=variant if j == 0 else None)
                    plotted.append(losses)
                    if diverged:
                        ax.plot(steps[-1:], losses[-1:], "x", color=f"C{i}", markersize=9)
        if plotted:  # a divergence's 1e12 would flatten every other curve
            low = min(map(min, plotted))
            top = min(max(map(max, plotted)), 3.0 * max(losses[0] for losses in plotted))
            ax.set_ylim(low - 0.05 * (top - low), top + 0.05 * (top - low))
        ax.set_title(f"{optim}{'' if momentum is None else f' m={momentum:g}'} lr {lr:g}")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (x: diverged)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser, argv, run_args = sweep_parser(__doc__, argv)
    parser.add_argument("--variants", nargs="+", default=None, help="[BASE/]INIT[+warmup] (default: see above)")
    parser.add_argument("--adam_lrs", nargs="*", type=float, default=[5e-4, 1e-3, 5e-3])
    parser.add_argument("--sgd_lrs", nargs="*", type=float, default=[])
    parser.add_argument("--momenta", nargs="*", type=float, default=[0.9])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--warmup", type=int, default=400, help="warmup steps of the +warmup variants")
    parser.add_argument(
        "--warmup_scheduler",
        choices=["linear", "inverse_sqrt"],
        default="linear",
        help="schedule of the +warmup variants: the run's linear one, or fairseq's inverse sqrt",
    )
    parser.add_argument("--logging_steps", type=int, default=25)
    args = parser.parse_args(argv)
    args.run_args = run_args
    args.variants = args.variants or default_variants()
    from hf_gradinit import available_initializers

    for v in args.variants:
        run = Run(v, "adam", 1.0, None, 0)
        base, init, _ = run.parts()
        if init not in available_initializers() or base not in BASES:
            parser.error(f"variant {v!r}: INIT must be one of {available_initializers()}, BASE one of {BASES}.")
        if run.ablation is not None and run.ablation not in ABLATIONS:
            parser.error(f"variant {v!r}: ABLATION must be one of {sorted(ABLATIONS)}.")
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    records = run_sweep(
        plan(args),
        lambda run: execute(run, args),
        lambda r: f"BLEU {bleu_of(r):.2f}",
        args.out / "results.jsonl",
        jobs=args.jobs,
        report_only=args.report_only,
        with_records=args.with_records,
    )
    if records:
        write_table(records, args.out / "results.md")
        write_plots(records, args.out)
        print((args.out / "results.md").read_text())
    return records


if __name__ == "__main__":
    main()
