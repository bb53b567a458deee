"""What a MetaInit run learned: :class:`MetaInitResult`."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ...scales import apply_scales

FORMAT_VERSION = 1


@dataclass
class MetaInitResult:
    """The outcome of :func:`metainit`: one scale (learned norm / initial norm) per tensor.

    MetaInit keeps directions, so the result re-applies as scales:
    ``apply_scales(fresh_model, result)`` (or :meth:`apply`) gives the same weights bit for
    bit on a model built with the same seed.

    Attributes:
        scales: Final norm over initial norm, by parameter name (one name per tied group).
        init_norms: Norm of each of those tensors before MetaInit.
        skipped: Trainable tensors whose norm was not learned, and why.
        history: One record per step: ``step``, ``gq`` (the gradient quotient on that step's
            batch, before its update), ``loss`` and ``seconds``.
        initial_gq, final_gq: GQ on the first batch before and after the run.
        config: The settings the run used.
        timings: ``total_s``, ``steps_s`` and ``step_s`` (mean seconds a step).
    """

    scales: dict[str, float]
    init_norms: dict[str, float]
    skipped: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    initial_gq: float = math.nan
    final_gq: float = math.nan
    config: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.history)

    def apply(self, model: nn.Module) -> nn.Module:
        """Re-apply the learned norms to a freshly built model (see :func:`apply_scales`)."""
        return apply_scales(model, self.scales, init_norms=self.init_norms)

    def metrics(self, prefix: str = "metainit/") -> dict[str, float]:
        """A flat dict of summary figures, for logging to a tracker."""
        values = list(self.scales.values())
        out = {
            "steps": float(self.steps),
            "initial_gq": self.initial_gq,
            "final_gq": self.final_gq,
            "tensors": float(len(values)),
            "scale_mean": sum(values) / len(values) if values else math.nan,
            "scale_min": min(values, default=math.nan),
            "scale_max": max(values, default=math.nan),
            "seconds": float(self.timings.get("total_s", math.nan)),
        }
        return {f"{prefix}{k}": float(v) for k, v in out.items()}

    def summary(self, max_rows: int | None = 40) -> str:
        """A plain-text table of the learned norms (largest changes first), with GQ before/after."""
        rows = sorted(self.scales, key=lambda n: -abs(math.log(max(self.scales[n], 1e-12))))
        shown = rows if max_rows is None else rows[:max_rows]
        width = max([len("tensor")] + [len(n) for n in shown])
        lines = [
            f"MetaInit: {self.steps} steps in {self.timings.get('total_s', math.nan):.1f}s; gradient quotient"
            f" {self.initial_gq:.4g} -> {self.final_gq:.4g}; {len(self.scales)} norms learned,"
            f" {len(self.skipped)} tensors kept",
            f"{'tensor':<{width}}  {'init norm':>10}  {'scale':>8}  {'final norm':>10}",
        ]
        for n in shown:
            a, norm0 = self.scales[n], self.init_norms[n]
            lines.append(f"{n:<{width}}  {norm0:>10.4g}  {a:>8.4f}  {a * norm0:>10.4g}")
        if len(shown) < len(rows):
            lines.append(f"... {len(rows) - len(shown)} more (summary(max_rows=None) lists all)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary(max_rows=10)

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON (floats round-trip exactly)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format_version": FORMAT_VERSION, "initializer": "metainit", **dataclasses.asdict(self)}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, allow_nan=True))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> MetaInitResult:
        """Read a result written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"Cannot read a MetaInit result from {str(path)!r}: {err}") from err
        if data.pop("format_version", None) != FORMAT_VERSION or data.pop("initializer", None) != "metainit":
            raise ValueError(f"{str(path)!r} is not a MetaInit result of format {FORMAT_VERSION}.")
        return cls(**data)
