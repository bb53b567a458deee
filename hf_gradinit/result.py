"""What the initialisers' results share: the file format, and the per-tensor scales of GradInit
and MetaInit (:class:`ScalesResult`).

Every result file is a JSON object with ``format_version`` and an ``initializer`` tag (the
registered name of the method that wrote it), so a file given to the wrong method is refused
with the name of the right one. GradInit files written before the tag existed carry none and
still load as GradInit results.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .scales import ParamInfo, apply_scales, excluded, trainable_parameters

FORMAT_VERSION = 1


def read_result_file(path: str | os.PathLike, initializer: str, display_name: str) -> dict[str, Any]:
    """The JSON object of a result file written by ``initializer``, without its format fields.

    Raises ``ValueError`` naming the problem: unreadable, not JSON, not an object, another
    format version, or another initialiser's tag (naming it). No tag is taken as GradInit's.
    """
    where = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"Cannot read a {display_name} result from {where!r}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(
            f"{where!r} is not a {display_name} result: it holds a JSON {type(data).__name__}, not an object"
            f" (a {display_name} result's save() writes one)."
        )
    version = data.pop("format_version", None)
    tag = data.pop("initializer", "gradinit")
    if tag != initializer:
        raise ValueError(
            f"{where!r} was written by the initialiser {tag!r}, not {initializer!r}: load it with that one"
            f" (--model_init {tag}) or give a {display_name} result."
        )
    if version != FORMAT_VERSION:
        raise ValueError(f"{where!r} is not a {display_name} result of format {FORMAT_VERSION} (found {version!r}).")
    return data


def write_json_atomically(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write ``data`` as JSON through a temporary file, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=True))
    tmp.replace(path)
    return path


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_KINDS = ("weight", "bias", "norm")
_BOUND_PREFIX = {"weight": "", "bias": "bias_", "norm": "norm_"}


def _check_kinds(kinds: Any, scales: dict[str, float], where: str) -> None:
    """Raise ``ValueError`` unless ``kinds`` maps exactly the scaled tensors to a known kind."""
    if not isinstance(kinds, dict) or set(kinds) != set(scales):
        raise ValueError(f"{where!r}: 'scales', 'init_norms' and 'kinds' must name the same tensors.")
    odd = {n: k for n, k in kinds.items() if k not in _KINDS}
    if odd:
        raise ValueError(f"{where!r}: kinds must be one of {list(_KINDS)}, got {dict(list(odd.items())[:3])}.")


@dataclass
class ScalesResult:
    """One learned scale per tensor (the direction kept): what GradInit and MetaInit return.

    Re-applied to a freshly built model with :meth:`apply` (or :func:`~hf_gradinit.apply_scales`),
    it gives the initialised weights bit for bit when the model is built with the same seed.

    Attributes:
        scales: Learned scale by parameter name (one name per tied group, the one
            ``named_parameters()`` gives).
        init_norms: Norm of each of those tensors before the run.
        skipped: Trainable tensors left unscaled, and why.
        history: One record per step.
        config: The settings the run used.
        timings: Seconds (``total_s`` and the method's own).
        kinds: ``"weight"``, ``"bias"`` or ``"norm"`` (normalisation-layer weight) per tensor,
            read off the module types; the pictures group by it. ``{}`` where a file predates it
            (MetaInit's before 2026-12-08): the pictures then read the kinds off the names.
    """

    initializer: ClassVar[str] = ""
    display_name: ClassVar[str] = ""
    #: Fields a file must hold besides the ones every result has.
    required_fields: ClassVar[tuple[str, ...]] = ("scales", "init_norms")
    #: Fields that map names to values (checked on load), whatever the class's annotations look like.
    mapping_fields: ClassVar[tuple[str, ...]] = ("scales", "init_norms", "skipped", "config", "timings", "kinds")

    scales: dict[str, float]
    init_norms: dict[str, float]
    skipped: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)

    # -- what a method may override ----------------------------------------------------------
    def kind_of(self, name: str) -> str:
        """``"weight"``, ``"bias"`` or ``"norm"``: which of the config's bounds a scale obeys."""
        return "weight"

    def would_scale(self, info: ParamInfo) -> bool:
        """Whether the run would have given this tensor of a fresh model a scale."""
        exclude = tuple(self.config.get("exclude") or ())
        return info.name not in self.skipped and not excluded(info.name, exclude) and bool(info.param.detach().any())

    # -- shared behaviour ---------------------------------------------------------------------
    def apply(self, model: nn.Module, *, allow_partial: bool = False) -> nn.Module:
        """Re-apply these scales to a freshly built model (see :func:`~hf_gradinit.apply_scales`).

        Checked before anything is written: every tensor of ``model`` that the run would have
        rescaled must have a scale, and the scaled tensors' norms must match the recorded ones
        (within 10%: a model built another way or with another architecture fails; a different
        seed of the same initialisation passes with a warning). ``allow_partial=True`` applies a
        file that covers only part of the model (the rest is left as it is).
        """
        candidates = [i.name for i in trainable_parameters(model) if self.would_scale(i)]
        uncovered = [n for n in candidates if n not in self.scales]
        if uncovered and not allow_partial:
            raise ValueError(
                f"These scales cover {len(candidates) - len(uncovered)} of the {len(candidates)} tensors"
                f" {self.display_name} would rescale in {type(model).__name__}; {len(uncovered)} have no scale"
                f" (first: {', '.join(uncovered[:3])}). Were they learned on another architecture or"
                " configuration? Build the model as the run did, or pass allow_partial=True"
                " (--init_scales_partial true) to apply them to the tensors they name only."
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
                f" initialisation), so the scales would not mean the same. Build it as the {self.display_name}"
                " run did."
            )
        return apply_scales(model, self.scales, init_norms=self.init_norms)

    def group_stats(self) -> dict[str, dict[str, float]]:
        """Count, mean, min and max of the learned scales per kind of tensor."""
        out: dict[str, dict[str, float]] = {}
        for kind in _KINDS:
            values = [a for n, a in self.scales.items() if self.kind_of(n) == kind]
            if values:
                out[kind] = {"count": len(values), "mean": statistics.fmean(values), "min": min(values),
                             "max": max(values)}  # fmt: skip
        return out

    def scale_range(self) -> str:
        """``"scales 0.01-2.3 (weight 0.01-2.3, norm 0.9-1.1)"``: the range per kind of tensor."""
        if not self.scales:
            return "no scales"
        values = list(self.scales.values())
        stats = self.group_stats()
        per_kind = ", ".join(f"{k} {s['min']:.3g}-{s['max']:.3g}" for k, s in stats.items())
        return f"scales {min(values):.3g}-{max(values):.3g}" + (f" ({per_kind})" if len(stats) > 1 else "")

    def headline(self) -> str:
        """The summary's first line (what the console shows after a Trainer run)."""
        return self.summary(max_rows=0).splitlines()[0]

    def scale_rows(self, max_rows: int | None) -> list[str]:
        """The table of learned scales (largest changes first) that every summary shows."""
        rows = sorted(self.scales, key=lambda n: -abs(math.log(max(self.scales[n], 1e-12))))
        shown = rows if max_rows is None else rows[:max_rows]
        width = max([len("tensor")] + [len(n) for n in shown])
        lines = [f"{'tensor':<{width}}  {'kind':<6}  {'init norm':>10}  {'scale':>8}  {'final norm':>10}"]
        for n in shown:
            a, norm0 = self.scales[n], self.init_norms[n]
            lines.append(f"{n:<{width}}  {self.kind_of(n):<6}  {norm0:>10.4g}  {a:>8.4f}  {a * norm0:>10.4g}")
        if len(shown) < len(rows):
            lines.append(f"... {len(rows) - len(shown)} more (summary(max_rows=None) lists all)")
        return lines

    def summary(self, max_rows: int | None = 40) -> str:
        raise NotImplementedError

    def plot(self, path: str | os.PathLike | None = None) -> Path:
        """Save a PNG of the learned scale of every tensor, by layer (encoder and decoder apart);
        returns its path (default ``<initializer>_scales.png``). Needs matplotlib."""
        from .plotting import plot_scales

        path = f"{self.initializer}_scales.png" if path is None else path
        title = f"{self.display_name}: learned scale of each tensor ({len(self.scales)} tensors)"
        return plot_scales(self.scales, path, title=title, ylabel="learned scale", kinds=self.plot_kinds())

    def plot_kinds(self) -> dict[str, str] | None:
        """Which tensors are weights, normalisation weights or biases, where the result knows it
        from the module types (the picture colours by it; ``None``: read off the names)."""
        return dict(self.kinds) or None

    def __str__(self) -> str:
        return self.summary(max_rows=10)

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "initializer": self.initializer, **asdict(self)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result as JSON (scales are stored exactly: floats round-trip)."""
        return write_json_atomically(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Any:
        """Read a result written by :meth:`save`, checking it before anything can use it.

        Raises ``ValueError`` naming the problem for a file that is not such a result
        (unreadable, not JSON, a list or a number, another initialiser's, missing or unknown
        fields, scales that are not a name-to-number mapping) and for scales a run cannot have
        produced: non-finite, negative, zero for a weight, or outside the bounds of the run's own
        config (a weight scale below ``min_scale`` would shrink a tensor; a negative one flips it).
        """
        data = read_result_file(path, cls.initializer, cls.display_name)
        cls._check_fields(data, str(path))
        return cls(**data)

    @classmethod
    def _check_fields(cls, data: dict[str, Any], where: str) -> None:
        what = f"{where!r} is not a {cls.display_name} result"
        known = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(data) - known), sorted(set(cls.required_fields) - set(data))
        if unknown or missing:
            raise ValueError(
                f"{what}: "
                + (f"unknown fields {unknown}" if unknown else "")
                + ("; " if unknown and missing else "")
                + (f"missing fields {missing}" if missing else "")
                + f" (a result has {sorted(known)})."
            )
        for name in cls.mapping_fields:
            value = data.get(name)
            if value is not None and (not isinstance(value, dict) or not all(isinstance(k, str) for k in value)):
                raise ValueError(f"{what}: {name!r} must map parameter names to values, got a {type(value).__name__}.")
        if not isinstance(data.get("history", []), list):
            raise ValueError(f"{what}: 'history' must be a list of records.")
        scales, norms = data["scales"], data["init_norms"]
        bad = {n: v for n, v in scales.items() if not _number(v) or v < 0}
        if bad:
            raise ValueError(
                f"{where!r}: scales must be finite numbers >= 0, got {dict(list(bad.items())[:3])}. A negative"
                f" scale would flip a tensor; the file is damaged or was not written by {cls.display_name}."
            )
        if set(norms) != set(scales):
            raise ValueError(f"{where!r}: 'scales' and 'init_norms' must name the same tensors.")
        if data.get("kinds") or "kinds" in cls.required_fields:
            _check_kinds(data.get("kinds"), scales, where)
        config = data.get("config") or {}
        # kind_of may read the run's config (which tensors a variant bounds how).
        probe = cls(**{"config": config, **{k: data[k] for k in cls.required_fields}})
        # The scales are learned in float32 and clamped there: a scale at its bound may sit one
        # float32 rounding below it (0.01 is stored as 0.00999999977).
        tolerance = 1e-6
        for n, a in scales.items():
            kind = probe.kind_of(n)
            prefix = _BOUND_PREFIX[kind]
            low, high = config.get(f"{prefix}min_scale"), config.get(f"{prefix}max_scale")
            if kind != "bias" and a == 0:
                raise ValueError(f"{where!r}: the {kind} {n!r} has scale 0, which would zero it out.")
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
