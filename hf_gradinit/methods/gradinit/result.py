"""What a GradInit run learned, in a form to read, save, and re-apply: :class:`GradInitResult`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...result import ScalesResult


@dataclass
class GradInitResult(ScalesResult):
    """The outcome of :func:`hf_gradinit.gradinit` (save, load and re-apply: :class:`~hf_gradinit.result.ScalesResult`).

    Attributes:
        scales: Learned scale of every rescaled tensor, by parameter name (one name per tied
            group, the one ``named_parameters()`` gives).
        init_norms: Norm of each rescaled tensor before GradInit.
        skipped: Trainable tensors left unscaled and why (``"zero norm"``, ``"excluded"``).
        history: One record per iteration: ``step``, ``kind`` (``"objective"`` or
            ``"constraint"``), ``loss`` (``L(S; theta)``), ``grad_norm`` (``||g||_p``),
            ``lookahead_loss`` (``L(S~; theta')``, objective steps only), ``objective``
            (``lookahead_loss / eta``) and ``seconds``.
        config: The resolved settings the run used.
        timings: ``total_s``, ``setup_s``, ``iterations_s``, and the mean seconds of each
            kind of step (``objective_step_s``, ``constraint_step_s``).
        kinds: ``"weight"``, ``"bias"`` or ``"norm"`` (normalisation-layer weight) per tensor:
            which of the config's bounds its scale obeys.
    """

    initializer = "gradinit"
    display_name = "GradInit"
    required_fields = ("scales", "init_norms", "kinds")

    def kind_of(self, name: str) -> str:
        return self.kinds[name]

    @property
    def iterations(self) -> int:
        return len(self.history)

    @property
    def num_constraint_steps(self) -> int:
        return sum(1 for h in self.history if h["kind"] == "constraint")

    @property
    def num_objective_steps(self) -> int:
        return sum(1 for h in self.history if h["kind"] == "objective")

    def metrics(self, prefix: str = "gradinit/") -> dict[str, float]:
        """A flat dict of summary figures, for logging to a tracker."""
        first = self.history[0] if self.history else {}
        last = self.history[-1] if self.history else {}
        objective_steps = [h for h in self.history if h["kind"] == "objective"]
        out: dict[str, float] = {
            "iterations": float(self.iterations),
            "objective_steps": float(self.num_objective_steps),
            "constraint_steps": float(self.num_constraint_steps),
            # Against the config's gamma these say whether the constraint bound from the start
            # and whether the budget of iterations sufficed to meet it.
            "initial_loss": float(first.get("loss", math.nan)),
            "initial_grad_norm": float(first.get("grad_norm", math.nan)),
            "final_loss": float(last.get("loss", math.nan)),
            "final_grad_norm": float(last.get("grad_norm", math.nan)),
            "final_objective": float(objective_steps[-1]["objective"]) if objective_steps else math.nan,
            "seconds": float(self.timings.get("total_s", math.nan)),
        }
        for kind, stats in self.group_stats().items():
            for stat in ("mean", "min", "max"):
                out[f"scale_{kind}_{stat}"] = float(stats[stat])
        return {f"{prefix}{k}": v for k, v in out.items()}

    def headline(self) -> str:
        """One line: iterations, both kinds of step, time, tensors and the range of the scales."""
        return (
            f"GradInit: {self.iterations} iterations ({self.num_objective_steps} objective, "
            f"{self.num_constraint_steps} constraint) in {self.timings.get('total_s', math.nan):.1f}s; "
            f"{len(self.scales)} tensors rescaled, {len(self.skipped)} skipped; {self.scale_range()}"
        )

    def summary(self, max_rows: int | None = 40) -> str:
        """A plain-text table of the learned scales (largest changes first), with totals."""
        lines = [self.headline(), *self.scale_rows(max_rows)]
        for kind, s in self.group_stats().items():
            lines.append(
                f"{kind:>6}: {s['count']:>4} tensors, scale mean {s['mean']:.4f} min {s['min']:.4f} max {s['max']:.4f}"
            )
        return "\n".join(lines)
