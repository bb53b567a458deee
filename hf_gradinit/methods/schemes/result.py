"""What a fixed scheme did to a model: :class:`SchemeResult`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...result import FORMAT_VERSION, write_json_atomically


@dataclass
class SchemeResult:
    """The record of a formula initialisation (Fixup, T-Fixup): nothing is learned, so there is
    nothing to re-apply; it says what was set and what was changed in the model's structure.

    Attributes:
        initializer: The registered name.
        scales: The factor each tensor's fresh initialisation was multiplied by (0 for the
            zero-initialised ones), by parameter name.
        removed: Modules replaced by ``nn.Identity`` (T-Fixup's LayerNorms), by name.
        config: The settings and the depths the formulas used.
    """

    initializer: str
    scales: dict[str, float] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def headline(self) -> str:
        zero = sum(1 for v in self.scales.values() if v == 0)
        rest = [v for v in self.scales.values() if v != 0]
        span = f"factors {min(rest):.3g}-{max(rest):.3g}" if rest else "no factors"
        removed = f"; {len(self.removed)} normalisation layers removed" if self.removed else ""
        depths = ", ".join(f"{k}={v}" for k, v in self.config.items() if k in ("L", "m", "N", "M"))
        return f"{self.initializer}: {len(self.scales)} tensors set ({zero} to zero, {span}; {depths}){removed}"

    def summary(self, max_rows: int | None = 40) -> str:
        rows = sorted(self.scales.items(), key=lambda kv: kv[1])
        shown = rows if max_rows is None else rows[:max_rows]
        width = max([len("tensor")] + [len(n) for n, _ in shown])
        lines = [self.headline(), f"{'tensor':<{width}}  {'factor':>8}"]
        lines += [f"{n:<{width}}  {v:>8.4g}" for n, v in shown]
        if len(shown) < len(rows):
            lines.append(f"... {len(rows) - len(shown)} more (summary(max_rows=None) lists all)")
        lines += [f"removed: {name}" for name in self.removed[: max_rows or None]]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary(max_rows=10)

    def metrics(self, prefix: str | None = None) -> dict[str, float]:
        prefix = f"{self.initializer}/" if prefix is None else prefix
        rest = [v for v in self.scales.values() if v != 0]
        out = {
            "tensors": float(len(self.scales)),
            "zeroed": float(sum(1 for v in self.scales.values() if v == 0)),
            "factor_min": min(rest, default=math.nan),
            "factor_max": max(rest, default=math.nan),
            "removed_norms": float(len(self.removed)),
        }
        return {f"{prefix}{k}": v for k, v in out.items()}

    def save(self, path: str | Path) -> Path:
        return write_json_atomically(path, {"format_version": FORMAT_VERSION, **asdict(self)})

    def plot(self, path: str | Path | None = None) -> Path:
        """A PNG of the factors by layer (zero-initialised tensors left out: log scale)."""
        from ...plotting import plot_scales

        path = f"{self.initializer}_factors.png" if path is None else path
        nonzero = {n: v for n, v in self.scales.items() if v > 0}
        return plot_scales(nonzero, path, title=f"{self.initializer}: factor on each tensor's init", ylabel="factor")
