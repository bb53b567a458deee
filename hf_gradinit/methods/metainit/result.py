"""What a MetaInit run learned: :class:`MetaInitResult`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...result import ScalesResult
from ...scales import ParamInfo


@dataclass
class MetaInitResult(ScalesResult):
    """The outcome of :func:`metainit`: one scale (learned norm / initial norm) per tensor.

    MetaInit keeps directions, so the result re-applies as scales:
    :meth:`apply` (checked) or ``apply_scales(fresh_model, result)`` gives the same weights bit
    for bit on a model built with the same seed.

    Attributes:
        scales: Final norm over initial norm, by parameter name (one name per tied group).
        init_norms: Norm of each of those tensors before MetaInit.
        skipped: Trainable tensors whose norm was not learned, and why.
        history: One record per step: ``step``, ``gq`` (the gradient quotient on that step's
            batch, before its update), ``loss`` and ``seconds``.
        initial_gq, final_gq: GQ on the first batch before and after the run.
        config: The settings the run used.
        timings: ``total_s``, ``steps_s`` and ``step_s`` (mean seconds a step).
        kinds: Weight, normalisation weight or bias per tensor (for the pictures; ``{}`` in
            files written before 2026-12-08).
    """

    initializer = "metainit"
    display_name = "MetaInit"

    initial_gq: float = math.nan
    final_gq: float = math.nan

    def kind_of(self, name: str) -> str:
        # Only optimizer="adam" scales biases, bounded below by 0 instead of min_scale.
        local = name.rsplit(".", 1)[-1]
        return "bias" if self.config.get("optimizer") == "adam" and "bias" in local else "weight"

    def would_scale(self, info: ParamInfo) -> bool:
        # optimizer="adam" (the GradInit authors' variant) scales 1-D tensors too.
        vectors = self.config.get("optimizer") == "adam"
        return (vectors or info.param.dim() >= 2) and super().would_scale(info)

    @property
    def steps(self) -> int:
        return len(self.history)

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

    def headline(self) -> str:
        """One line: steps, time, the gradient quotient before and after, the range of the scales."""
        return (
            f"MetaInit: {self.steps} steps in {self.timings.get('total_s', math.nan):.1f}s; gradient quotient"
            f" {self.initial_gq:.4g} -> {self.final_gq:.4g}; {len(self.scales)} norms learned,"
            f" {len(self.skipped)} tensors kept; {self.scale_range()}"
        )

    def summary(self, max_rows: int | None = 40) -> str:
        """A plain-text table of the learned norms (largest changes first), with GQ before/after."""
        lines = [self.headline(), *self.scale_rows(max_rows)]
        return "\n".join(lines)
