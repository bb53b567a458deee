"""What an LSUV run wrote, to read, save and re-apply: :class:`LSUVResult`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ...result import FORMAT_VERSION, read_result_file, write_json_atomically


@dataclass
class LSUVResult:
    """The outcome of :func:`lsuv`.

    LSUV changes the *directions* of weights (orthonormal pre-initialisation), not only
    their norms, so a result cannot be re-applied as scales: it carries the final value of
    every tensor LSUV wrote (``tensors``: processed weights, and the biases the
    pre-initialisation zeroed), and :meth:`apply` copies them into a freshly built model
    bit for bit. :meth:`save` writes them next to the JSON as safetensors.

    Attributes:
        layers: One record per processed layer, in execution order: ``layer`` (module name),
            ``weight`` (parameter name), ``index`` (position among the layers the forward
            pass ran), ``std_init`` (output std of the untouched model), ``std_before``
            (at its turn, after pre-initialisation and the layers before it), ``tries``
            (corrections made), ``scale`` (product of the corrections), ``std_after``
            (output std of the finished model) and ``converged`` (within ``tol`` at the end of its
            turn).
        skipped: Layers not processed, by module name, and why.
        tensors: Final values of the tensors LSUV wrote, by parameter name (CPU tensors).
        config: The settings the run used.
        timings: ``total_s`` and ``forward_passes``.
    """

    initializer: ClassVar[str] = "lsuv"

    layers: list[dict[str, Any]]
    skipped: dict[str, str] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    config: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @torch.no_grad()
    def apply(self, model: nn.Module, *, allow_partial: bool = False) -> nn.Module:
        """Write the saved final tensors into ``model`` (built with the same architecture).

        Every name and shape is checked before anything is written; ``allow_partial=True``
        skips the tensors ``model`` does not have instead of refusing.
        """
        params = dict(model.named_parameters(remove_duplicate=False))
        missing = [n for n in self.tensors if n not in params]
        if missing and not allow_partial:
            raise KeyError(
                f"{len(missing)} tensor(s) of the LSUV result are not parameters of {type(model).__name__}"
                f" (first: {missing[0]!r}); build the model with the architecture LSUV ran on."
            )
        wrong = [n for n, t in self.tensors.items() if n in params and tuple(params[n].shape) != tuple(t.shape)]
        if wrong:
            raise ValueError(
                f"Shape mismatch for {wrong[0]!r}: the model has {tuple(params[wrong[0]].shape)}, the LSUV"
                f" result {tuple(self.tensors[wrong[0]].shape)}."
            )
        for name, value in self.tensors.items():
            if name in params:
                params[name].copy_(value)
        return model

    @property
    def scales(self) -> dict[str, float]:
        """The product of LSUV's corrections, by weight name (after the orthonormal
        pre-initialisation, when it ran): the figure its plot and TensorBoard show."""
        return {r["weight"]: float(r["scale"]) for r in self.layers}

    def plot(self, path: str | Path | None = None) -> Path:
        """Save a PNG of each processed weight's LSUV scale, by layer; returns its path
        (default ``lsuv_scales.png``). Needs matplotlib."""
        from ...plotting import plot_scales

        path = "lsuv_scales.png" if path is None else path
        title = f"LSUV: product of the corrections of each weight ({len(self.layers)} layers)"
        return plot_scales(self.scales, path, title=title, ylabel="LSUV scale")

    def metrics(self, prefix: str = "lsuv/") -> dict[str, float]:
        """A flat dict of summary figures, for logging to a tracker."""
        after = [r["std_after"] for r in self.layers]
        scales = [r["scale"] for r in self.layers]
        out = {
            "layers": float(len(self.layers)),
            "skipped": float(len(self.skipped)),
            "not_converged": float(sum(not r["converged"] for r in self.layers)),
            "tries": float(sum(r["tries"] for r in self.layers)),
            "std_after_min": min(after, default=math.nan),
            "std_after_max": max(after, default=math.nan),
            "scale_min": min(scales, default=math.nan),
            "scale_max": max(scales, default=math.nan),
            "seconds": float(self.timings.get("total_s", math.nan)),
        }
        return {f"{prefix}{k}": float(v) for k, v in out.items()}

    def headline(self) -> str:
        """One line: layers, time, convergence and the range of the corrections."""
        scales = [r["scale"] for r in self.layers]
        span = f"scales {min(scales):.3g}-{max(scales):.3g}" if scales else "no layers"
        return (
            f"LSUV: {len(self.layers)} layers processed in {self.timings.get('total_s', math.nan):.1f}s,"
            f" {sum(not r['converged'] for r in self.layers)} not converged, {len(self.skipped)} skipped; {span}"
        )

    def summary(self, max_rows: int | None = 40) -> str:
        """A plain-text table of the processed layers, in execution order."""
        shown = self.layers if max_rows is None else self.layers[:max_rows]
        width = max([len("layer")] + [len(r["layer"]) for r in shown])
        lines = [
            self.headline(),
            f"{'#':>4}  {'layer':<{width}}  {'std init':>9}  {'before':>9}  {'tries':>5}  {'scale':>9}  {'after':>9}",
        ]
        for r in shown:
            lines.append(
                f"{r['index']:>4}  {r['layer']:<{width}}  {r['std_init']:>9.4g}  {r['std_before']:>9.4g}"
                f"  {r['tries']:>5}  {r['scale']:>9.4g}  {r['std_after']:>9.4g}" + ("" if r["converged"] else "  !")
            )
        if len(shown) < len(self.layers):
            lines.append(f"... {len(self.layers) - len(shown)} more (summary(max_rows=None) lists all)")
        reasons: dict[str, int] = {}
        for why in self.skipped.values():
            reasons[why.split(":")[0]] = reasons.get(why.split(":")[0], 0) + 1
        for why, count in sorted(reasons.items()):
            lines.append(f"skipped: {count} x {why}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary(max_rows=10)

    def save(self, path: str | Path) -> Path:
        """Write the figures as JSON at ``path`` and the tensors next to it (same name,
        suffix ``.safetensors``)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        weights = _weights_path(path)
        data = {
            "format_version": FORMAT_VERSION,
            "initializer": self.initializer,
            "layers": self.layers,
            "skipped": self.skipped,
            "config": self.config,
            "timings": self.timings,
            "tensors_file": weights.name,
            "tensor_names": sorted(self.tensors),
        }
        tmp = weights.with_name(weights.name + ".tmp")
        save_file({n: t.detach().cpu().contiguous() for n, t in self.tensors.items()}, str(tmp))
        tmp.replace(weights)
        return write_json_atomically(path, data)

    @classmethod
    def load(cls, path: str | Path) -> LSUVResult:
        """Read a result written by :meth:`save` (the JSON and its tensors file)."""
        from safetensors.torch import load_file

        path = Path(path)
        data = read_result_file(path, cls.initializer, "LSUV")
        missing = sorted({"layers", "tensors_file", "tensor_names"} - set(data))
        if missing:
            raise ValueError(f"{str(path)!r} is not an LSUV result: missing fields {missing}.")
        weights = path.with_name(data["tensors_file"])
        try:
            tensors = load_file(str(weights))
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(
                f"Cannot read the tensors of the LSUV result {str(path)!r} from {str(weights)!r}: {err}"
            ) from err
        if sorted(tensors) != data["tensor_names"]:
            raise ValueError(f"{str(weights)!r} does not hold the tensors {str(path)!r} lists.")
        return cls(
            layers=data["layers"],
            skipped=data["skipped"],
            tensors=tensors,
            config=data["config"],
            timings=data["timings"],
        )


def _weights_path(path: Path) -> Path:
    return path.with_suffix(".safetensors") if path.suffix == ".json" else path.with_name(path.name + ".safetensors")
