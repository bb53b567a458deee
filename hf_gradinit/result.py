"""What a GradInit run learned, in a form to read, save, and re-apply."""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .scales import apply_scales

FORMAT_VERSION = 1


@dataclass
class GradInitResult:
    """The outcome of :func:`hf_gradinit.gradinit`.

    Attributes:
        scales: Learned scale of every rescaled tensor, by parameter name (one name per tied
            group, the one ``named_parameters()`` gives).
        init_norms: Norm of each rescaled tensor before GradInit.
        kinds: ``"weight"``, ``"bias"`` or ``"norm"`` (normalisation-layer weight) per tensor.
        skipped: Trainable tensors left unscaled and why (``"zero norm"``, ``"excluded"``).
        history: One record per iteration: ``step``, ``kind`` (``"objective"`` or
            ``"constraint"``), ``loss`` (``L(S; theta)``), ``grad_norm`` (``||g||_p``),
            ``lookahead_loss`` (``L(S~; theta')``, objective steps only), ``objective``
            (``lookahead_loss / eta``) and ``seconds``.
        config: The resolved settings the run used.
        timings: ``total_s``, ``setup_s``, ``iterations_s``, and the mean seconds of each
            kind of step (``objective_step_s``, ``constraint_step_s``).
    """

    scales: dict[str, float]
    init_norms: dict[str, float]
    kinds: dict[str, str]
    skipped: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def iterations(self) -> int:
        return len(self.history)

    @property
    def num_constraint_steps(self) -> int:
        return sum(1 for h in self.history if h["kind"] == "constraint")

    @property
    def num_objective_steps(self) -> int:
        return sum(1 for h in self.history if h["kind"] == "objective")

    def apply(self, model: nn.Module) -> nn.Module:
        """Re-apply these scales to a freshly built model (see :func:`apply_scales`)."""
        return apply_scales(model, self.scales, init_norms=self.init_norms)

    def group_stats(self) -> dict[str, dict[str, float]]:
        """Count, mean, min and max of the learned scales per kind of tensor."""
        out: dict[str, dict[str, float]] = {}
        for kind in ("weight", "bias", "norm"):
            values = [a for n, a in self.scales.items() if self.kinds[n] == kind]
            if values:
                out[kind] = {
                    "count": len(values),
                    "mean": statistics.fmean(values),
                    "min": min(values),
                    "max": max(values),
                }
        return out

    def metrics(self, prefix: str = "gradinit/") -> dict[str, float]:
        """A flat dict of summary figures, for logging to a tracker."""
        last = self.history[-1] if self.history else {}
        objective_steps = [h for h in self.history if h["kind"] == "objective"]
        out: dict[str, float] = {
            "iterations": float(self.iterations),
            "objective_steps": float(self.num_objective_steps),
            "constraint_steps": float(self.num_constraint_steps),
            "final_loss": float(last.get("loss", math.nan)),
            "final_grad_norm": float(last.get("grad_norm", math.nan)),
            "final_objective": float(objective_steps[-1]["objective"]) if objective_steps else math.nan,
            "seconds": float(self.timings.get("total_s", math.nan)),
        }
        for kind, stats in self.group_stats().items():
            for stat in ("mean", "min", "max"):
                out[f"scale_{kind}_{stat}"] = float(stats[stat])
        return {f"{prefix}{k}": v for k, v in out.items()}

    def summary(self, max_rows: int | None = 40) -> str:
        """A plain-text table of the learned scales (largest changes first), with totals."""
        rows = sorted(self.scales, key=lambda n: -abs(math.log(max(self.scales[n], 1e-12))))
        shown = rows if max_rows is None else rows[:max_rows]
        width = max([len("tensor")] + [len(n) for n in shown])
        lines = [
            f"GradInit: {self.iterations} iterations ({self.num_objective_steps} objective, "
            f"{self.num_constraint_steps} constraint) in {self.timings.get('total_s', math.nan):.1f}s; "
            f"{len(self.scales)} tensors rescaled, {len(self.skipped)} skipped",
            f"{'tensor':<{width}}  {'kind':<6}  {'init norm':>10}  {'scale':>8}  {'final norm':>10}",
        ]
        for n in shown:
            a, norm0 = self.scales[n], self.init_norms[n]
            lines.append(f"{n:<{width}}  {self.kinds[n]:<6}  {norm0:>10.4g}  {a:>8.4f}  {a * norm0:>10.4g}")
        if len(shown) < len(rows):
            lines.append(f"... {len(rows) - len(shown)} more (summary(max_rows=None) lists all)")
        for kind, s in self.group_stats().items():
            lines.append(
                f"{kind:>6}: {s['count']:>4} tensors, scale mean {s['mean']:.4f} min {s['min']:.4f} max {s['max']:.4f}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary(max_rows=10)

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **asdict(self)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result as JSON (scales are stored exactly: floats round-trip)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=True))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> GradInitResult:
        """Read a result written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"Cannot read a GradInit result from {str(path)!r}: {err}") from err
        version = data.pop("format_version", None)
        if version != FORMAT_VERSION or "scales" not in data:
            raise ValueError(
                f"{str(path)!r} is not a GradInit result of format {FORMAT_VERSION} (found version {version!r})."
            )
        return cls(**data)
