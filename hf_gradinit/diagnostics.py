"""How far the optimizer's first step moves each tensor: a check to run before training.

A Post-LN Transformer that fails without warmup fails in its first few updates, and what
decides it is the size of an update relative to the weights it changes. Adam's first update
is ``lr * sign(g)`` whatever the gradient's size, so ``||Δθ|| / ||θ|| = lr * sqrt(n) / ||θ||``
for a tensor of ``n`` elements: a weight of std ``σ`` moves by ``lr / σ`` of its size. SGD's
first update is ``lr * g`` and moves a tensor by ``lr * ||g|| / ||θ||``. GradInit changes both
ratios by rescaling ``θ`` (and, through the network, ``g``); this report shows by how much,
per tensor and per layer, for any ``nn.Module``.

>>> import torch
>>> torch.manual_seed(0) and None
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
>>> x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
>>> loss_fn = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])
>>> report = first_step_report(model, (x, y), lr=1e-3, target="adam", loss_fn=loss_fn)
>>> [row.name for row in report.rows]
['0.weight', '0.bias', '1.weight', '1.bias']
>>> row = report.rows[0]  # Adam's first step: lr * sqrt(#nonzero gradient entries)
>>> abs(row.update_norm - 1e-3 * row.nonzero_grads**0.5) < 1e-9
True
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .batches import Batch, LossFn, model_loss, to_device
from .model_state import model_device
from .plotting import tensor_position
from .scales import trainable_parameters


@dataclass
class TensorStep:
    """One tensor's first update.

    Attributes:
        name: Parameter name (one name per tied group, as ``named_parameters()``).
        numel: Number of elements.
        param_norm: ``||θ||`` (2-norm).
        grad_norm: ``||g||`` (2-norm) on the batch.
        grad_norm_l1: ``||g||_1``, the norm GradInit bounds for an Adam target.
        nonzero_grads: Entries with a non-zero gradient (Adam moves exactly these).
        update_norm: ``||Δθ||`` of the optimizer's first step.
    """

    name: str
    numel: int
    param_norm: float
    grad_norm: float
    grad_norm_l1: float
    nonzero_grads: int
    update_norm: float

    @property
    def relative_update(self) -> float:
        """``||Δθ|| / ||θ||``; infinite for a zero tensor that moves, 0 for one that does not."""
        if self.param_norm > 0:
            return self.update_norm / self.param_norm
        return math.inf if self.update_norm > 0 else 0.0

    @property
    def part(self) -> str:
        """``"encoder"``, ``"decoder"`` or ``"model"`` (from the name)."""
        return tensor_position(self.name)[0]

    @property
    def layer(self) -> int | None:
        """Index of the block the tensor belongs to, ``None`` outside the stacked blocks."""
        return tensor_position(self.name)[1]

    @property
    def kind(self) -> str:
        """The tensor's name inside its block (``self_attn.v_proj.weight``), or its full name."""
        return tensor_position(self.name)[2]


@dataclass
class FirstStepReport:
    """Per-tensor sizes of the first step of ``target`` at ``lr`` (see :func:`first_step_report`)."""

    target: str
    lr: float
    loss: float
    rows: list[TensorStep] = field(default_factory=list)
    label: str = ""

    def total(self) -> dict[str, float]:
        """Whole-model figures: ``||g||_1``, ``||g||_2`` and the relative update of all tensors."""
        p2 = math.sqrt(sum(r.param_norm**2 for r in self.rows))
        u2 = math.sqrt(sum(r.update_norm**2 for r in self.rows))
        return {
            "loss": self.loss,
            "grad_norm_l1": sum(r.grad_norm_l1 for r in self.rows),
            "grad_norm": math.sqrt(sum(r.grad_norm**2 for r in self.rows)),
            "relative_update": u2 / p2 if p2 > 0 else math.inf,
        }

    def table(self, max_rows: int | None = None, sort: bool = False) -> str:
        """A Markdown table, one row per tensor (if ``sort``: largest relative update first, zero
        tensors, whose relative update is infinite, last)."""

        def order(r: TensorStep) -> tuple[bool, float]:
            rel = r.relative_update
            return (math.isinf(rel), 0.0 if math.isinf(rel) else -rel)

        rows = sorted(self.rows, key=order) if sort else list(self.rows)
        shown = rows if max_rows is None else rows[:max_rows]
        t = self.total()
        lines = [
            f"First {self.target} step at lr {self.lr:g}{f' ({self.label})' if self.label else ''}:"
            f" loss {self.loss:.4f},"
            f" |g|_1 {t['grad_norm_l1']:.4g}, |g|_2 {t['grad_norm']:.4g}, |Δθ|/|θ| {t['relative_update']:.3g}"
            " (whole model)",
            "",
            "| tensor | numel | |θ| | |g|_2 | |Δθ|/|θ| |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.name} | {r.numel} | {r.param_norm:.4g} | {r.grad_norm:.4g} | {r.relative_update:.3g} |"
            for r in shown
        ]
        if len(shown) < len(rows):
            lines.append(f"| ... {len(rows) - len(shown)} more | | | | |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "lr": self.lr,
            "loss": self.loss,
            "label": self.label,
            "total": self.total(),
            "rows": [{**asdict(r), "relative_update": r.relative_update} for r in self.rows],
        }

    def save(self, path: str | Path) -> None:
        """JSON with every row (``relative_update`` included)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, allow_nan=True))

    @classmethod
    def load(cls, path: str | Path) -> FirstStepReport:
        values = json.loads(Path(path).read_text())
        names = {f for f in TensorStep.__dataclass_fields__}
        rows = [TensorStep(**{k: v for k, v in r.items() if k in names}) for r in values["rows"]]
        return cls(values["target"], values["lr"], values["loss"], rows, values.get("label", ""))


def first_step_report(
    model: nn.Module,
    batch: Batch,
    lr: float,
    target: Literal["adam", "adamw", "sgd"] = "adam",
    *,
    loss_fn: LossFn | None = None,
    weight_decay: float = 0.0,
    normalize_step: bool = False,
    train_mode: bool = False,
    label: str = "",
) -> FirstStepReport:
    """Measure the first update ``target`` would make at ``lr`` on ``batch``, per tensor.

    Nothing in the model changes: gradients come from ``torch.autograd.grad`` (``.grad`` is
    left alone), the mode is restored, and in ``train_mode`` (dropout on, as the real first
    step) torch's RNG is forked so the caller's stream is untouched.

    Args:
        model: Any module; a batch that is a dict is passed as ``model(**batch)`` and the
            output's ``loss`` used, or give ``loss_fn(model, batch)``.
        batch: One training batch (moved to the model's device).
        lr: The learning rate you will train with.
        target: ``"adam"``/``"adamw"``: first update ``lr * sign(g)`` (plus ``lr * wd * θ`` for
            AdamW); ``"sgd"``: ``lr * g`` (``lr * g / ||g||`` with ``normalize_step``).
        weight_decay: The optimizer's weight decay, for AdamW (decoupled) and SGD (coupled).
        train_mode: Evaluate with dropout on instead of in eval mode.
        label: A name for the report (``"base init"``, ``"after gradinit"``) in tables and plots.
    """
    if target not in ("adam", "adamw", "sgd"):
        raise ValueError(f"target must be 'adam', 'adamw' or 'sgd', got {target!r}.")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}.")
    named = [(info.name, info.param) for info in trainable_parameters(model)]
    if not named:
        raise ValueError(f"{type(model).__name__} has no trainable floating-point parameters to report on.")
    was_training = {m: m.training for m in model.modules()}
    device = model_device(model)
    try:
        model.train(train_mode)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            loss = model_loss(model, to_device(batch, device), loss_fn)
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    finally:
        for m, mode in was_training.items():
            m.training = mode
    grads = [torch.zeros_like(p) if g is None else g for (_, p), g in zip(named, grads, strict=True)]
    sgd_scale = 1.0
    if target == "sgd" and normalize_step:
        total = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
        sgd_scale = 1.0 / total if total > 0 else 0.0
    rows = []
    with torch.no_grad():
        for (name, p), g in zip(named, grads, strict=True):
            theta, g64 = p.detach().double(), g.detach().double()
            if target == "sgd":
                step = lr * (sgd_scale * g64 + weight_decay * theta)
            else:
                step = lr * torch.sign(g64)
                if target == "adamw" and weight_decay:
                    step = step + lr * weight_decay * theta
            rows.append(
                TensorStep(
                    name=name,
                    numel=p.numel(),
                    param_norm=float(theta.norm()),
                    grad_norm=float(g64.norm()),
                    grad_norm_l1=float(g64.abs().sum()),
                    nonzero_grads=int(torch.count_nonzero(g64)),
                    update_norm=float(step.norm()),
                )
            )
    return FirstStepReport(target, float(lr), float(loss.detach()), rows, label)


def by_layer(report: FirstStepReport) -> dict[str, dict[str, list[tuple[int, float, float]]]]:
    """``{part: {kind: [(layer, relative update, grad norm), ...]}}`` for the stacked blocks."""
    out: dict[str, dict[str, list[tuple[int, float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in report.rows:
        if r.layer is not None and r.param_norm > 0:
            out[r.part][r.kind].append((r.layer, r.relative_update, r.grad_norm))
    return {part: {k: sorted(v) for k, v in kinds.items()} for part, kinds in out.items()}


def plot_first_step(reports: list[FirstStepReport] | FirstStepReport, path: str | Path) -> Path:
    """A PNG: per layer (encoder and decoder apart), each weight kind's ``|Δθ|/|θ|`` (top) and
    ``|g|`` (bottom); one line style per report (e.g. before and after GradInit)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = [reports] if isinstance(reports, FirstStepReport) else list(reports)
    layered = [by_layer(r) for r in reports]
    parts = sorted({p for lay in layered for p in lay}, key=["encoder", "decoder", "model"].index) or ["model"]
    kinds = sorted({k for lay in layered for part in lay.values() for k in part if k.endswith("weight")})
    cmap = plt.get_cmap("tab20")
    colors = {k: cmap(i % 20) for i, k in enumerate(kinds)}
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(2, len(parts), figsize=(7 * len(parts), 8), squeeze=False)
    for col, part in enumerate(parts):
        for i, lay in enumerate(layered):
            for kind in kinds:
                points = lay.get(part, {}).get(kind)
                if not points:
                    continue
                layers, rel, gn = zip(*points, strict=True)
                kw = {"color": colors[kind], "ls": styles[i % len(styles)], "marker": "o", "ms": 3}
                # One legend entry per weight kind (colour); the line style is the report.
                axes[0][col].plot(layers, rel, label=kind.removesuffix(".weight") if i == 0 else None, **kw)
                axes[1][col].plot(layers, gn, **kw)
        axes[0][col].set_title(f"{part}: first {reports[0].target} step at lr {reports[0].lr:g}")
        axes[0][col].set_ylabel("|Δθ| / |θ|")
        axes[1][col].set_ylabel("|g| (2-norm)")
        for ax in axes[:, col]:
            ax.set_yscale("log")
            ax.set_xlabel("layer")
            ax.grid(alpha=0.3, which="both")
        axes[0][col].legend(fontsize=6, ncol=2, loc="best")
    names = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dash-dot"}
    fig.suptitle(
        ", ".join(f"{names[styles[i % len(styles)]]}: {r.label or f'report {i + 1}'}" for i, r in enumerate(reports))
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
