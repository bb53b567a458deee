"""Batches: moving them to the model, splitting them into S and S~, turning them into a loss."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .errors import GradInitError

Batch = Any
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


def recursively_apply(fn: Callable[[torch.Tensor, str], Any], batch: Batch, key: str = "") -> Batch:
    """``batch`` with every tensor ``t`` replaced by ``fn(t, key)``, structure kept.

    The one walk over nested batches (as accelerate's ``recursively_apply``): mappings
    (``BatchEncoding`` and other dict types rebuilt as their own type), named tuples, tuples
    and lists are walked; anything else is left as it is. ``key`` is the name of the
    innermost mapping entry (or named-tuple field) holding the tensor, for functions that
    treat masks or position ids differently.
    """
    if isinstance(batch, torch.Tensor):
        return fn(batch, key)
    if isinstance(batch, Mapping):
        return _rebuild(batch, {k: recursively_apply(fn, v, str(k)) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(recursively_apply(fn, v, f) for f, v in zip(batch._fields, batch, strict=True)))
    if isinstance(batch, (list, tuple)):
        return type(batch)(recursively_apply(fn, v, key) for v in batch)
    return batch


def _rebuild(mapping: Mapping, items: dict) -> Mapping:
    # transformers' BatchEncoding takes a dict as first argument; so do dict and its plain
    # subclasses. Anything exotic comes back as a plain dict.
    try:
        return type(mapping)(items)
    except Exception:
        return items


def tensors(batch: Batch) -> list[torch.Tensor]:
    """Every tensor of a nested batch, in order."""
    found: list[torch.Tensor] = []
    recursively_apply(lambda t, _: found.append(t) or t, batch)
    return found


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor of a (nested) batch to ``device``; leave everything else alone."""
    return recursively_apply(lambda t, _: t.to(device, non_blocking=True), batch)


def promote_half(batch: Batch) -> Batch:
    """The batch with fp16/bf16 tensors in fp32: the model runs in fp32 during the pass
    (see :class:`~hf_gradinit.model_state.PreparedModel`), so half-precision inputs must follow."""
    return recursively_apply(lambda t, _: t.float() if t.dtype in (torch.float16, torch.bfloat16) else t, batch)


def call_model(model: nn.Module, batch: Batch) -> Any:
    """``model(**batch)`` for a mapping, ``model(*batch)`` for a tuple or list, else ``model(batch)``:
    the one way every initialiser feeds a batch to a model."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        return model(*batch)
    return model(batch)


def batch_size(batch: Batch) -> int:
    """Number of samples: the leading size of the batch's first tensor with one."""
    for t in tensors(batch):
        if t.dim() > 0:
            return int(t.shape[0])
    raise GradInitError(
        f"Cannot tell how many samples a batch of type {type(batch).__name__} holds: it has no tensor"
        " with a batch dimension. Give batches as dicts, tuples or lists of tensors."
    )


def _slice(batch: Batch, n: int, start: int, stop: int) -> Batch:
    return recursively_apply(lambda t, _: t[start:stop] if t.dim() > 0 and t.shape[0] == n else t, batch)


def split_batch(batch: Batch, overlap: float) -> tuple[Batch, Batch]:
    """Split one batch by samples into the overlapping minibatches ``S`` and ``S~``.

    Both get ``m = round(n / (2 - overlap))`` samples and share ``round(overlap * m)`` of
    them: ``S`` is the first ``m`` samples and ``S~`` the last ``m``. With ``overlap=0.5``
    that is the paper's Transformer split into thirds (``S`` = thirds 1-2, ``S~`` = thirds
    2-3), and the same in distribution as its CNN split ``B0+B1`` / ``B0+B2``.

    Every tensor whose leading size is the batch size is sliced; other values are shared.
    """
    n = batch_size(batch)
    m = min(n, max(1, round(n / (2.0 - overlap))))
    shared = 2 * m - n
    if n < 2 and overlap < 1.0:
        raise GradInitError(
            f"A GradInit batch needs at least 2 samples to form two overlapping minibatches, got {n}."
            " Use a larger batch size (the paper uses 128 for CNNs) or overlap=1.0."
        )
    if shared < 0 or m - shared < 0:
        raise GradInitError(f"Cannot split a batch of {n} samples with overlap {overlap}.")
    return _slice(batch, n, 0, m), _slice(batch, n, n - m, n)


def model_loss(model: nn.Module, batch: Batch, loss_fn: LossFn | None) -> torch.Tensor:
    """The scalar loss of ``model`` on ``batch``.

    With ``loss_fn`` it is ``loss_fn(model, batch)``. Otherwise the model is called with the
    batch (``model(**batch)`` for a mapping, ``model(*batch)`` for a tuple or list,
    ``model(batch)`` otherwise) and its output's ``loss`` is used (a ``ModelOutput`` or dict
    with a ``loss`` entry, or a scalar tensor).
    """
    if loss_fn is not None:
        loss = loss_fn(model, batch)
    else:
        loss = _output_loss(call_model(model, batch))
        if loss is None:
            raise GradInitError(
                f"{type(model).__name__} returned no loss for this batch"
                + (f" (batch keys: {sorted(batch)})" if isinstance(batch, Mapping) else "")
                + ". Include the labels in the batch (for Hugging Face models, a 'labels' entry), or"
                " pass loss_fn=lambda model, batch: ... returning a scalar loss."
            )
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise GradInitError(
            f"The loss must be a scalar tensor, got {type(loss).__name__}"
            + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else "")
            + ". Reduce it (for example with .mean()) in loss_fn."
        )
    return loss.reshape(())


def _output_loss(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output if output.numel() == 1 else None
    if isinstance(output, Mapping):
        return output.get("loss")
    return getattr(output, "loss", None)


class BatchStream:
    """Batches from ``data`` without end: a re-iterable (a DataLoader, a list) starts over
    when it runs out; a one-shot iterator simply ends (``next_batch`` returns ``None``)."""

    def __init__(self, data: Iterable[Batch]):
        if not isinstance(data, Iterable):
            raise GradInitError(
                f"data must be an iterable of batches (a DataLoader, a list of dicts...), got {type(data).__name__}."
            )
        self._data = data
        self._it = iter(data)
        self._one_shot = self._it is data
        self.epochs = 0

    def next_batch(self) -> Batch | None:
        try:
            return next(self._it)
        except StopIteration:
            if self._one_shot:
                return None
        self.epochs += 1
        self._it = iter(self._data)
        try:
            return next(self._it)
        except StopIteration:
            return None
