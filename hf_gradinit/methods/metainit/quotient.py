"""MetaInit's gradient quotient, its random inputs, and the norm layers it differentiates three times."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ...batches import Batch, recursively_apply


def gradient_quotient(grads: Sequence[torch.Tensor], hvps: Sequence[torch.Tensor], eps: float) -> torch.Tensor:
    """``mean_k |(g_k - (Hg)_k) / (g_k + eps sgn(g_k)) - 1|`` over every entry of every tensor.

    ``sgn(0) = 1`` and the sign is held constant, as in the authors' code, so the
    denominator never vanishes. Differentiable in ``grads`` and ``hvps``.

    Example:
        >>> import torch
        >>> g, hg = [torch.tensor([2.0, -1.0])], [torch.tensor([1.0, 0.5])]
        >>> round(float(gradient_quotient(g, hg, eps=0.0)), 6)  # (|1/2 - 1| + |-1.5/-1 - 1|) / 2
        0.5
    """
    total: torch.Tensor | None = None
    count = 0
    for g, hg in zip(grads, hvps, strict=True):
        sgn = torch.where(g >= 0, 1.0, -1.0).to(g.dtype).detach()
        # (g - Hg)/(g + e) - 1 = -(Hg + e)/(g + e): the same value, without the cancellation.
        term = ((hg + eps * sgn) / (g + eps * sgn)).abs().sum()
        total = term if total is None else total + term
        count += g.numel()
    if total is None:
        raise ValueError("gradient_quotient needs at least one tensor.")
    return total / count


def randomize_batch(batch: Batch, generator: torch.Generator) -> Batch:
    """Random data with the structure of ``batch`` (MetaInit's ``random_inputs``).

    Float tensors become standard Gaussian noise; integer tensors random integers in the
    range of the batch's own non-negative entries (negative entries such as the ``-100`` of
    ignored labels stay where they are); bool tensors, and every entry whose key contains
    ``mask`` or ``position`` (structure, not content), are kept. Drawn on the CPU from
    ``generator``, so a seed gives the same data on every device.

    Example:
        >>> import torch
        >>> b = {"input_ids": torch.tensor([[5, 9, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
        >>> r = randomize_batch(b, torch.Generator().manual_seed(0))
        >>> bool(((r["input_ids"] >= 5) & (r["input_ids"] <= 9)).all())
        True
        >>> torch.equal(r["attention_mask"], b["attention_mask"])
        True
    """

    def draw(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            return torch.randn(t.shape, generator=generator, dtype=torch.float64).to(t.device, t.dtype)
        if t.dtype == torch.bool or t.is_complex():
            return t
        valid = t[t >= 0]
        if valid.numel() == 0:
            return t
        low, high = int(valid.min()), int(valid.max())
        values = torch.randint(low, high + 1, t.shape, generator=generator, dtype=torch.int64).to(t.device, t.dtype)
        return torch.where(t < 0, t, values)

    return recursively_apply(lambda t, key: t if ("mask" in key or "position" in key) else draw(t), batch)


class _ComposedNorms(TorchFunctionMode):
    """Runs LayerNorm and batch-statistics BatchNorm as compositions of elementary ops.

    torch's fused kernels save the mean and inverse std without autograd history, so their
    double backward is right but a third derivative through it is silently wrong (pytorch
    issues 175754 and 186256). MetaInit's exact mode differentiates GQ through ``Hg``, a
    third derivative of the loss, so it evaluates these two norms in a form autograd can
    differentiate any number of times.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (F.layer_norm, torch.layer_norm):
            return _layer_norm(*args, **kwargs)
        if func in (F.batch_norm, torch.batch_norm):
            return _batch_norm(func, *args, **kwargs)
        return func(*args, **kwargs)


def _layer_norm(
    input: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *_: Any,
) -> torch.Tensor:
    dims = tuple(range(-len(normalized_shape), 0))
    centred = input - input.mean(dim=dims, keepdim=True)
    out = centred * torch.rsqrt(centred.square().mean(dim=dims, keepdim=True) + eps)
    if weight is not None:
        out = out * weight
    return out + bias if bias is not None else out


def _batch_norm(
    func: Any,
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *rest: Any,
) -> torch.Tensor:
    if not training and running_mean is not None:
        # Fixed statistics: an affine map, which the fused kernel differentiates exactly.
        return func(input, running_mean, running_var, weight, bias, training, momentum, eps, *rest)
    dims = (0, *range(2, input.dim()))
    shape = (1, -1) + (1,) * (input.dim() - 2)
    mean = input.mean(dim=dims, keepdim=True)
    var = (input - mean).square().mean(dim=dims, keepdim=True)
    if training and running_mean is not None and running_var is not None:
        with torch.no_grad():
            n = input.numel() // input.shape[1]
            running_mean.mul_(1 - momentum).add_(mean.reshape(-1), alpha=momentum)
            running_var.mul_(1 - momentum).add_(var.reshape(-1) * n / max(n - 1, 1), alpha=momentum)
    out = (input - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        out = out * weight.reshape(shape)
    return out + bias.reshape(shape) if bias is not None else out
