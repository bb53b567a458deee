"""What a GradInit run learned, in a form to read, save, and re-apply."""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...scales import apply_scales, excluded, trainable_parameters

FORMAT_VERSION = 1


_KINDS = ("weight", "bias", "norm")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_fields(data: dict[str, Any], where: str) -> None:
    """Refuse, with the reason, a result file that a GradInit run cannot have written."""
    known = {f for f in GradInitResult.__dataclass_fields__}
    unknown, missing = sorted(set(data) - known), sorted({"scales", "init_norms", "kinds"} - set(data))
    if unknown or missing:
        raise ValueError(
            f"{where!r} is not a GradInit result: "
            + (f"unknown fields {unknown}" if unknown else "")
            + ("; " if unknown and missing else "")
            + (f"missing fields {missing}" if missing else "")
            + f" (a result has {sorted(known)})."
        )
    for name in ("scales", "init_norms", "kinds", "skipped", "config", "timings"):
        value = data.get(name, {})
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError(
                f"{where!r} is not a GradInit result: {name!r} must map parameter names to values, got a"
                f" {type(value).__name__}."
            )
    scales, norms, kinds = data["scales"], data["init_norms"], data["kinds"]
    bad = {n: v for n, v in scales.items() if not _number(v) or v < 0}
    if bad:
        raise ValueError(
            f"{where!r}: scales must be finite numbers >= 0, got {dict(list(bad.items())[:3])}. A negative"
            " scale would flip a tensor; the file is damaged or was not written by GradInit."
        )
    if set(norms) != set(scales) or set(kinds) != set(scales):
        raise ValueError(f"{where!r}: 'scales', 'init_norms' and 'kinds' must name the same tensors.")
    odd = {n: k for n, k in kinds.items() if k not in _KINDS}
    if odd:
        raise ValueError(f"{where!r}: kinds must be one of {list(_KINDS)}, got {dict(list(odd.items())[:3])}.")
    if not isinstance(data.get("history", []), list):
        raise ValueError(f"{where!r} is not a GradInit result: 'history' must be a list of records.")
    config = data.get("config") or {}
    tolerance = 1e-9
    for n, a in scales.items():
        prefix = {"weight": "", "bias": "bias_", "norm": "norm_"}[kinds[n]]
        low, high = config.get(f"{prefix}min_scale"), config.get(f"{prefix}max_scale")
        if kinds[n] != "bias" and a == 0:
            raise ValueError(f"{where!r}: the {kinds[n]} {n!r} has scale 0, which would zero it out.")
        if _number(low) and a < low * (1 - tolerance):
            raise ValueError(
                f"{where!r}: {n!r} has scale {a!r}, below the run's {prefix}min_scale={low!r}; the file was"
                " edited or damaged."
            )
        if _number(high) and a > high * (1 + tolerance):
            raise ValueError(
                f"{where!r}: {n!r} has scale {a!r}, above the run's {prefix}max_scale={high!r}; the file was"
                " edited or damaged."
            )


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

    def apply(self, model: nn.Module, *, allow_partial: bool = False) -> nn.Module:
        """Re-apply these scales to a freshly built model (see :func:`apply_scales`).

        Checked before anything is written: every tensor of ``model`` that this run would have
        rescaled (trainable, non-zero, not excluded by the run's config) must have a scale, and
        the scaled tensors' norms must match the ones recorded (within 10%: a model built
        another way or with another architecture fails; a different seed of the same
        initialisation passes with a warning). ``allow_partial=True`` applies a file that
        covers only part of the model (the rest is left as it is).
        """
        exclude = tuple(self.config.get("exclude") or ())
        candidates = [
            i.name
            for i in trainable_parameters(model)
            if i.name not in self.skipped and not excluded(i.name, exclude) and bool(i.param.detach().any())
        ]
        uncovered = [n for n in candidates if n not in self.scales]
        if uncovered and not allow_partial:
            raise ValueError(
                f"These scales cover {len(candidates) - len(uncovered)} of the {len(candidates)} tensors GradInit"
                f" would rescale in {type(model).__name__}; {len(uncovered)} have no scale (first:"
                f" {', '.join(uncovered[:3])}). Were they learned on another architecture or configuration?"
                " Build the model as the run did, or pass allow_partial=True (--init_scales_partial true)"
                " to apply them to the tensors they name only."
            )
        by_name = dict(model.named_parameters(remove_duplicate=False))
        far = []
        for n, norm0 in self.init_norms.items():
            p = by_name.get(n)
            if p is not None and norm0 > 0:
                norm = float(torch.linalg.vector_norm(p.detach(), dtype=torch.float64))
                if abs(norm - norm0) > 0.1 * norm0:
                    far.append(f"{n} ({norm:.4g}, recorded {norm0:.4g})")
        if far:
            raise ValueError(
                f"{len(far)} tensor(s) of {type(model).__name__} have norms far from the ones these scales were"
                f" learned on (first: {far[0]}): the model was built another way (architecture, size or"
                " initialisation), so the scales would not mean the same. Build it as the GradInit run did."
            )
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
        """Read a result written by :meth:`save`, checking it before anything can use it.

        Raises ``ValueError`` naming the problem for a file that is not a GradInit result
        (unreadable, not JSON, a list or a number, missing or unknown fields, scales that are
        not a name-to-number mapping) and for scales a GradInit run cannot have produced:
        non-finite, negative, or outside the bounds of the run's own config (a weight scale
        below ``min_scale`` would shrink or zero a tensor; a negative one flips it).
        """
        where = str(path)
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"Cannot read a GradInit result from {where!r}: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(
                f"{where!r} is not a GradInit result: it holds a JSON {type(data).__name__}, not an object"
                " with 'scales', 'init_norms' and 'kinds' (GradInitResult.save writes one)."
            )
        version = data.pop("format_version", None)
        if version != FORMAT_VERSION or "scales" not in data:
            raise ValueError(
                f"{where!r} is not a GradInit result of format {FORMAT_VERSION} (found version {version!r})."
            )
        _check_fields(data, where)
        return cls(**data)
