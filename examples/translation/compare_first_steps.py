#!/usr/bin/env python
"""Compare first-step reports (``run_translation.py --first_step_report true``) kind by kind.

For each weight kind of the stacked blocks (``self_attn.v_proj.weight``, ``fc2.weight``...,
encoder and decoder apart) and each embedding, the mean over layers of ``|Δθ|/|θ|`` of the
optimizer's first step, one column per report, and the ratio of every column to the first.
It shows whether two models at two learning rates take the same relative first step (the
small CPU model against the paper's), or what an initialiser changed (before and after). Means
over layers hide single tensors, so a second table counts, per report, the weights the first
step moves by more than half their norm and names the largest.

    python examples/translation/compare_first_steps.py \\
        results/first_step/first_step_report.json "paper model, lr 5e-4" \\
        results/cpu_paper_small/runs/fairseq-gradinit_adam_lr0.001_s0/first_step_report.json "small, lr 1e-3"
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hf_gradinit.diagnostics import FirstStepReport


def by_kind(report: FirstStepReport) -> dict[tuple[str, str], float]:
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in report.rows:
        if row.param_norm > 0 and row.kind.endswith("weight"):
            groups[(row.part, row.kind)].append(row.relative_update)
    return {k: statistics.fmean(v) for k, v in groups.items()}


def table(reports: list[tuple[FirstStepReport, str]]) -> str:
    kinds = [by_kind(r) for r, _ in reports]
    keys = sorted(set().union(*kinds), key=lambda k: (["encoder", "decoder", "model"].index(k[0]), k[1]))
    head = " | ".join(f"{label} (lr {r.lr:g})" for r, label in reports)
    ratios = " | ".join(f"{label} / first" for _, label in reports[1:])
    lines = [f"| part | tensor | {head} | {ratios} |", "|---|---|" + "---|" * (2 * len(reports) - 1)]
    for key in keys:
        values = [k.get(key) for k in kinds]
        cells = [f"{v:.4f}" if v is not None else "" for v in values]
        rel = [f"{v / values[0]:.2f}" if v is not None and values[0] else "" for v in values[1:]]
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells + rel) + " |")
    totals = [r.total() for r, _ in reports]
    lines.append("")
    lines.append("Whole model: " + "; ".join(
        f"{label}: loss {t['loss']:.3f}, |g|_1 {t['grad_norm_l1']:.4g}, |Δθ|/|θ| {t['relative_update']:.4f}"
        for (_, label), t in zip(reports, totals, strict=True)
    ))  # fmt: skip
    return "\n".join(lines)


def outliers(reports: list[tuple[FirstStepReport, str]], threshold: float = 0.5) -> str:
    lines = [
        f"| report | weights moved > {threshold:g}x their norm | largest ‖Δθ‖/‖θ‖ (tensor) |",
        "|---|---|---|",
    ]
    for report, label in reports:
        weights = [r for r in report.rows if r.param_norm > 0 and r.kind.endswith("weight")]
        top = max(weights, key=lambda r: r.relative_update)
        moved = sum(r.relative_update > threshold for r in weights)
        lines.append(f"| {label} | {moved} of {len(weights)} | {top.relative_update:.2f} ({top.name}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or len(argv) % 2:
        raise SystemExit("usage: compare_first_steps.py REPORT.json LABEL [REPORT.json LABEL ...]")
    reports = [(FirstStepReport.load(argv[i]), argv[i + 1]) for i in range(0, len(argv), 2)]
    out = table(reports) + "\n\n" + outliers(reports)
    print(out)
    return out


if __name__ == "__main__":
    main()
