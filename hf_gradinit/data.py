"""Batches: moving them to the model, splitting them into S and S~, turning them into a loss."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from .errors import GradInitError

Batch = Any
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor of a (nested) batch to ``device``; leave everything else alone."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return _rebuild(batch, {k: to_device(v, device) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _rebuild(mapping: Mapping, items: dict) -> Mapping:
    # transformers' BatchEncoding takes a dict as first argument; so do dict and its plain
    # subclasses. Anything exotic comes back as a plain dict.
    try:
        return type(mapping)(items)
    except Exception:
        return items


def promote_half(batch: Batch) -> Batch:
    """The batch with fp16/bf16 tensors in fp32: the model runs in fp32 during the pass
    (see :class:`~hf_gradinit.model_state.PreparedModel`), so half-precision inputs must follow."""
    if isinstance(batch, torch.Tensor):
        return batch.float() if batch.dtype in (torch.float16, torch.bfloat16) else batch
    if isinstance(batch, Mapping):
        return _rebuild(batch, {k: promote_half(v) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(promote_half(v) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(promote_half(v) for v in batch)
    return batch


def _tensors(batch: Batch) -> Iterator[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, Mapping):
        for v in batch.values():
            yield from _tensors(v)
    elif isinstance(batch, (list, tuple)):
        for v in batch:
            yield from _tensors(v)


def batch_size(batch: Batch) -> int:
    """Number of samples: the leading size of the batch's first tensor with one."""
    for t in _tensors(batch):
        if t.dim() > 0:
            return int(t.shape[0])
    raise GradInitError(
        f"Cannot tell how many samples a batch of type {type(batch).__name__} holds: it has no tensor"
        " with a batch dimension. Give batches as dicts, tuples or lists of tensors."
    )


def _slice(batch: Batch, n: int, start: int, stop: int) -> Batch:
    if isinstance(batch, torch.Tensor):
        return batch[start:stop] if batch.dim() > 0 and batch.shape[0] == n else batch
    if isinstance(batch, Mapping):
        return _rebuild(batch, {k: _slice(v, n, start, stop) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_slice(v, n, start, stop) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_slice(v, n, start, stop) for v in batch)
    return batch


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
        if isinstance(batch, Mapping):
            output = model(**batch)
        elif isinstance(batch, (list, tuple)):
            output = model(*batch)
        else:
            output = model(batch)
        loss = _output_loss(output)
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
