#!/usr/bin/env python
"""The paper's CIFAR-10 comparison in one harness: initialisations x models x seeds, each a
``train_cifar.py`` run, reported like the paper's Table 1 (Acc1 and Acc_best, mean ± std).

A variant is ``INIT[:KEY=VALUE,...][+warmup|+constlr]``: ``INIT`` any registered initialiser
(``default`` is Kaiming), each ``KEY=VALUE`` its option ``--INIT_KEY VALUE`` (``metainit:optimizer=adam``
is MetaInit as the GradInit authors ran it), ``+warmup`` adds ``--warmup_epochs 1`` (the paper's
warmup baseline), ``+constlr`` ``--const_lr_epochs 1`` (its "+1 epoch (Const. LR)" baseline). Every finished run is
appended to ``results.jsonl`` in ``--out``, so running the same command again resumes a
half-done sweep. GradInit's and MetaInit's learned scales are kept as ``init/<key>.json`` with
their picture ``init/<key>.png``, so a result can quote every tensor's scale, and
``--init_scales_file init/<key>.json`` re-applies them to a fresh model. ``results.md`` (the
table), ``accuracy.png`` (test accuracy over the first epochs, one panel per model) and
``loss.png`` (the training loss of every whole run, log scale: a network without BatchNorm can
start at a loss of 1e8) are rewritten from everything in the file.
Arguments after ``--`` go to every run unchanged.

    python examples/cnn/sweep_cifar.py --out runs/cifar_sweep --models resnet20_bn vgg11_bn \\
        --variants default default+warmup gradinit metainit --seeds 0 1 2 --jobs 2 --threads_per_run 1 \\
        -- --data_dir ../shared/data/cifar10/cifar10-jpeg.tar.xz --train_samples 10000 --num_train_epochs 3
"""

from __future__ import annotations

import argparse
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
from script_support import SCALES_PICTURE_NAME  # noqa: E402

from hf_gradinit import available_initializers  # noqa: E402
from hf_gradinit.trainer.arguments import SCALES_FILE_NAME  # noqa: E402

KEPT = ("acc1", "acc_best", "acc_final", "accuracy_curve", "loss_curve", "train_loss", "train_runtime",
        "init_seconds", "init_fraction_of_train_runtime", "parameters", "train_samples", "test_samples",
        "machine")  # fmt: skip
# Initialisers whose result is one scale per tensor (a few kB of JSON, worth versioning); LSUV's
# result carries every tensor it wrote (80 MB for VGG-19), Fixup's factors follow from a formula.
KEPT_INITS = ("gradinit", "metainit")


@dataclass(frozen=True)
class Run:
    model: str
    variant: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.model}_{self.variant}_s{self.seed}"

    @property
    def init(self) -> str:
        return base_init(self.variant)

    @property
    def extra(self) -> list[str]:
        options = [x for key, value in init_options(self.variant) for x in (f"--{self.init}_{key}", value)]
        return options + next((flags for suffix, flags in SUFFIXES.items() if self.variant.endswith(suffix)), [])


# The paper's two "+1 epoch" baselines, as variant suffixes.
SUFFIXES = {"+warmup": ["--warmup_epochs", "1"], "+constlr": ["--const_lr_epochs", "1"]}


def _without_suffix(variant: str) -> str:
    for suffix in SUFFIXES:
        variant = variant.removesuffix(suffix)
    return variant


def base_init(variant: str) -> str:
    return _without_suffix(variant).split(":", 1)[0]


def init_options(variant: str) -> list[tuple[str, str]]:
    """The ``KEY=VALUE`` options of a variant, in order; ``ValueError`` for one without ``=``."""
    _, _, options = _without_suffix(variant).partition(":")
    pairs = []
    for item in filter(None, options.split(",")):
        key, sep, value = item.partition("=")
        if not (sep and key):
            raise ValueError(f"variant {variant!r}: {item!r} is not KEY=VALUE.")
        pairs.append((key, value))
    return pairs


def command(run: Run, args: argparse.Namespace) -> list[str]:
    cmd = [
        sys.executable, str(HERE / "train_cifar.py"), "--output_dir", str(args.out / "runs" / run.key),
        "--model", run.model, "--model_init", run.init, "--seed", str(run.seed), "--disable_tqdm", "true",
    ]  # fmt: skip
    if run.init in KEPT_INITS:
        cmd += ["--save_init_scales", "true"]
    return cmd + run.extra + list(args.run_args)


def execute(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    record = run_recorded(
        {**asdict(run), "key": run.key},
        command(run, args),
        args.out / "runs" / run.key,
        args.out / "logs" / f"{run.key}.log",
        KEPT,
        threads=args.threads_per_run,
        pythonpath=str(REPO),
    )
    if record["returncode"] == 0:
        kept = keep_init_files(args.out / "runs" / run.key, args.out / "init", run.key)
        if kept is not None:
            record["init_file"] = kept.relative_to(args.out).as_posix()
    return record


def keep_init_files(run_dir: Path, dest: Path, key: str) -> Path | None:
    """Copy a run's saved initialisation (``init_scales.json``) and its picture to
    ``dest/<key>.json|.png``: ``runs/`` is scratch (not versioned), these are what a result
    quotes. Returns the JSON's new path, or ``None`` where the run saved none."""
    import shutil

    source = run_dir / SCALES_FILE_NAME
    if not source.is_file():
        return None
    dest.mkdir(parents=True, exist_ok=True)
    target = Path(shutil.copyfile(source, dest / f"{key}.json"))
    picture = run_dir / SCALES_PICTURE_NAME
    if picture.is_file():
        shutil.copyfile(picture, dest / f"{key}.png")
    return target


def _ordered(values: list[str], first: list[str]) -> list[str]:
    """Distinct ``values``, those named in ``first`` first and in its order."""
    distinct = list(dict.fromkeys(values))
    return [v for v in first if v in distinct] + [v for v in distinct if v not in first]


def write_table(records: list[dict[str, Any]], path: Path, models: list[str], variants: list[str]) -> None:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["variant"], r["model"])].append(r)
    lines = [
        "Test accuracy (%), mean ± std over seeds (n = runs): Acc1 after the first epoch, Acc_best the best epoch.",
        "",
        "| init | metric | " + " | ".join(models) + " |",
        "|---|---|" + "---|" * len(models),
    ]
    for variant in variants:
        for metric, label in (("acc1", "Acc1"), ("acc_best", "Acc_best")):
            cells = []
            for model in models:
                rs = groups.get((variant, model), [])
                values = [r.get(metric) if r.get("returncode") == 0 else None for r in rs]
                cells.append(f"{mean_std(values)} (n={len(rs)})" if rs else "")
            lines.append(f"| {variant} | {label} | " + " | ".join(cells) + " |")
    fractions = [r["init_fraction_of_train_runtime"] for r in records if r.get("init_fraction_of_train_runtime")]
    if fractions:
        lines += [
            "",
            f"Initialiser time / training time: median {statistics.median(fractions):.1%} over {len(fractions)} runs.",
        ]
    path.write_text("\n".join(lines) + "\n")


def _curves(records: list[dict[str, Any]], model: str, variants: list[str], curve_of: Any):
    """(colour index, label or None, points) of every run of ``model``, one colour a variant."""
    for i, variant in enumerate(variants):
        for j, r in enumerate(x for x in records if x["model"] == model and x["variant"] == variant):
            points = curve_of(r)
            if points:
                yield i, (variant if j == 0 else None), points


def _panels(records, path: Path, models: list[str], variants: list[str], curve_of: Any, xlabel: str, ylabel: str,
            log_y: bool = False) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(4.8 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for i, label, points in _curves(records, model, variants, curve_of):
            ax.plot(*zip(*points, strict=True), color=f"C{i}", marker="o", ms=2 if log_y else 3, alpha=0.75,
                    label=label)  # fmt: skip
        ax.set_title(model)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plot(records: list[dict[str, Any]], path: Path, epochs: int, models: list[str], variants: list[str]) -> None:
    """Test accuracy over the first ``epochs`` epochs, a panel per model."""

    def curve(r: dict[str, Any]) -> list[tuple[float, float]]:
        return [(e, a) for e, a in (r.get("accuracy_curve") or []) if e <= epochs]

    _panels(records, path, models, variants, curve, "epoch", "test accuracy (%)")


def write_loss_plot(records: list[dict[str, Any]], path: Path, models: list[str], variants: list[str]) -> bool:
    """The training loss of every run (log scale), a panel per model; False (and nothing
    written) when no record holds a loss curve (records from before they were kept)."""

    def curve(r: dict[str, Any]) -> list[tuple[float, float]]:
        return [(s, v) for s, v in (r.get("loss_curve") or []) if v > 0]

    if not any(curve(r) for r in records):
        return False
    _panels(records, path, models, variants, curve, "update", "training loss (log scale)", log_y=True)
    return True


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser, argv, run_args = sweep_parser(__doc__, argv)
    parser.add_argument("--models", nargs="+", default=["resnet20_bn"], help="model names (see cifar_models.py)")
    parser.add_argument("--variants", nargs="+", default=["default", "default+warmup", "gradinit"],
                        help="INIT[:KEY=VALUE,...][+warmup|+constlr], INIT a registered initialiser")  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--plot_epochs", type=int, default=10, help="epochs shown in accuracy.png")
    args = parser.parse_args(argv)
    args.run_args = run_args
    for variant in args.variants:
        if base_init(variant) not in available_initializers():
            parser.error(
                f"variant {variant!r}: INIT must be one of {available_initializers()}, optionally with :KEY=VALUE"
                " options and +warmup or +constlr."
            )
        try:
            init_options(variant)
        except ValueError as err:
            parser.error(str(err))
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    plan = [Run(m, v, s) for m in args.models for v in args.variants for s in args.seeds]
    records = run_sweep(
        plan,
        lambda run: execute(run, args),
        lambda r: f"Acc1 {r.get('acc1')}, best {r.get('acc_best')}",
        args.out / "results.jsonl",
        jobs=args.jobs,
        report_only=args.report_only,
        with_records=args.with_records,
    )
    if records:
        models = _ordered([r["model"] for r in records], args.models)
        variants = _ordered([r["variant"] for r in records], args.variants)
        write_table(records, args.out / "results.md", models, variants)
        write_plot(records, args.out / "accuracy.png", args.plot_epochs, models, variants)
        write_loss_plot(records, args.out / "loss.png", models, variants)
        print((args.out / "results.md").read_text())
    return records


if __name__ == "__main__":
    main()
