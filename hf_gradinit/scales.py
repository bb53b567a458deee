"""Which tensors GradInit rescales, and how a learned scale is written into a model."""

from __future__ import annotations

import itertools
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from .result import ScalesResult

TensorKind = Literal["weight", "bias", "norm"]

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype GradInit computes in: fp32 for half-precision tensors, else unchanged."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def scaled(theta0: torch.Tensor, alpha: float, dtype: torch.dtype) -> torch.Tensor:
    """``alpha * theta0`` computed in GradInit's precision, cast to ``dtype``.

    The engine and :func:`apply_scales` both write weights through this function, so a saved
    initialisation re-applied to a model built with the same seed gives identical bits.
    """
    return (theta0.to(compute_dtype(theta0.dtype)) * alpha).to(dtype)


def is_norm_module(module: nn.Module) -> bool:
    # Hugging Face models define their own norm classes (LlamaRMSNorm, T5LayerNorm...).
    return isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()


@dataclass(frozen=True)
class ParamInfo:
    """A trainable floating-point tensor of the model, once per tied group."""

    name: str
    param: nn.Parameter
    kind: TensorKind
    aliases: tuple[str, ...]


def trainable_parameters(model: nn.Module) -> list[ParamInfo]:
    """Every trainable floating-point tensor, in ``named_parameters()`` order.

    Tied tensors appear once, under the name ``named_parameters()`` gives them, with their
    other names in ``aliases``. Frozen and non-floating tensors are not listed: training does
    not change them, so GradInit neither steps nor rescales them.
    """
    owners: dict[int, tuple[nn.Module, str]] = {}
    aliases: dict[int, list[str]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for local, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), (module, local))
            aliases.setdefault(id(p), []).append(f"{module_name}.{local}" if module_name else local)
    infos = []
    for name, p in model.named_parameters():
        if not (p.requires_grad and p.is_floating_point()):
            continue
        module, local = owners[id(p)]
        if "bias" in local:
            kind: TensorKind = "bias"
        elif is_norm_module(module):
            kind = "norm"
        else:
            kind = "weight"
        others = tuple(dict.fromkeys(a for a in aliases[id(p)] if a != name))
        infos.append(ParamInfo(name=name, param=p, kind=kind, aliases=others))
    return infos


def _memory_span(t: torch.Tensor) -> tuple[int, int, int]:
    storage = t.untyped_storage()
    start = t.storage_offset() * t.element_size()
    extent = sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride(), strict=True)) if t.numel() else 0
    return storage.data_ptr(), start, start + (extent + 1) * t.element_size() if t.numel() else start


def refuse_shared_storage(named: list[tuple[str, torch.Tensor]], what: str = "GradInit") -> None:
    """Raise if two distinct parameters overlap in memory (views of one tensor, or one storage
    wrapped twice): each would get its own scale, and whichever is written last would win."""
    spans = []
    for name, p in named:
        if p.is_meta or p.numel() == 0:
            continue
        ptr, lo, hi = _memory_span(p.data)
        if ptr:
            spans.append((ptr, lo, hi, name))
    spans.sort()
    for (ptr_a, _, hi_a, a), (ptr_b, lo_b, _, b) in itertools.pairwise(spans):
        if ptr_a == ptr_b and lo_b < hi_a:
            raise ValueError(
                f"Parameters {a!r} and {b!r} share memory (views of one tensor, or one storage wrapped twice)"
                f" but are different nn.Parameter objects: {what} would scale each on its own and the last write"
                " would win. Tie them as one Parameter (assign the same Parameter to both modules), or give them"
                " storage of their own (.clone()) if they are meant to differ."
            )


def excluded(name: str, patterns: tuple[str, ...]) -> bool:
    return any(re.search(pattern, name) for pattern in patterns)


def _resolve_names(model: nn.Module, names: list[str]) -> dict[str, nn.Parameter]:
    by_name = dict(model.named_parameters(remove_duplicate=False))
    missing = [n for n in names if n not in by_name]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise KeyError(
            f"{len(missing)} scaled tensor(s) are not parameters of {type(model).__name__}: {shown}."
            " Build the model with the same architecture and configuration as the one GradInit ran on."
        )
    seen: dict[int, str] = {}
    for n in names:
        first = seen.setdefault(id(by_name[n]), n)
        if first != n:
            raise ValueError(f"{first!r} and {n!r} are the same (tied) tensor; give it one scale only.")
    return {n: by_name[n] for n in names}


@torch.no_grad()
def apply_scales(
    model: nn.Module,
    scales: Mapping[str, float] | ScalesResult,
    *,
    init_norms: Mapping[str, float] | None = None,
) -> nn.Module:
    """Re-apply a learned initialisation: multiply each named tensor by its scale, in place.

    Scales are relative to the weights the model holds when GradInit ran, so apply them to
    a freshly built model; built with the same seed, it gets bit-identical weights to the
    model GradInit rescaled. Every name is checked before anything is written.

    Args:
        model: The freshly initialised model.
        scales: ``{parameter name: scale}``, or a :class:`GradInitResult`.
        init_norms: The norms the tensors had before GradInit (a result carries them); when
            given, a mismatch of more than 0.1% warns that the model was not built the same
            way (another seed or initialisation), since the scales would then mean little.

    Returns:
        The model, for chaining.

    Example:
        >>> import torch
        >>> from hf_gradinit import apply_scales
        >>> model = torch.nn.Linear(4, 2)
        >>> w = model.weight.detach().clone()
        >>> _ = apply_scales(model, {"weight": 0.5})
        >>> torch.equal(model.weight, w * 0.5)
        True
    """
    if hasattr(scales, "scales"):
        init_norms = init_norms if init_norms is not None else getattr(scales, "init_norms", None)
        scales = scales.scales  # type: ignore[union-attr]
    if isinstance(scales, (str, os.PathLike)):
        raise TypeError(
            f"apply_scales takes {{name: scale}} or a GradInitResult, got the path {str(scales)!r}: load the"
            " file first, apply_scales(model, GradInitResult.load(path)), or call result.apply(model)."
        )
    if not isinstance(scales, Mapping):
        raise TypeError(f"apply_scales takes {{name: scale}} or a GradInitResult, got {type(scales).__name__}.")
    params = _resolve_names(model, list(scales))
    refuse_shared_storage(list(dict(model.named_parameters()).items()), "apply_scales")
    meta = [n for n, p in params.items() if p.is_meta]
    if meta:
        raise ValueError(
            f"{len(meta)} tensor(s) to rescale are on the meta device (first: {meta[0]!r}): they hold no values."
            " Materialise the model first (to_empty(device=...) and its own initialisation, or build it without"
            " device='meta'), then apply the scales to the weights it was built with."
        )
    bad = {n: a for n, a in scales.items() if not (isinstance(a, (int, float)) and a == a and abs(a) != float("inf"))}
    if bad:
        raise ValueError(f"Scales must be finite numbers; got {bad}.")
    if init_norms:
        off = [
            n
            for n, p in params.items()
            if n in init_norms
            and abs(float(torch.linalg.vector_norm(p, dtype=torch.float64)) - init_norms[n]) > 1e-3 * init_norms[n]
        ]
        if off:
            warnings.warn(
                f"{len(off)} tensor(s) do not have the norm they had when the scales were learned"
                f" (first: {off[0]!r}); was the model built with another seed or initialisation?",
                stacklevel=2,
            )
    for name, p in params.items():
        p.copy_(scaled(p.detach(), float(scales[name]), p.dtype))
    return model
