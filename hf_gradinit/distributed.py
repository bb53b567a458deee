"""Averaging across processes, so every rank of a multi-process run learns the same scales.

Under DDP each process holds a shard of every batch. GradInit then does what a DDP training
step does: it averages the full gradient ``g`` across processes before forming the virtual
step and the gradient norm, and averages the scale gradients before the scale update. Every
rank thus applies the same update from the same state and ends with bit-identical weights,
equal (up to rounding) to a single-process run over the union of the shards. The averages
use accelerate's collectives (``accelerate.utils.reduce``), which work under ``torchrun`` and
``accelerate launch``, on GPUs (NCCL) and CPUs (gloo).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Processes in the default group (1 when torch.distributed is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class Collective:
    """Means across processes; no-ops in a single process.

    Args:
        enabled: ``None`` averages whenever torch.distributed is initialised with more than
            one process; ``False`` never does (each process runs its own GradInit).
    """

    def __init__(self, enabled: bool | None = None):
        self.world_size = world_size() if enabled is not False else 1
        self.active = self.world_size > 1

    def _reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        from accelerate.utils import reduce

        return reduce(tensor, reduction=reduction)

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._reduce(tensor, "mean") if self.active else tensor

    @torch.no_grad()
    def mean_(self, tensors: list[torch.Tensor]) -> None:
        """Average a list of tensors in place, one flat buffer per dtype (one collective each)."""
        if not self.active or not tensors:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = self._reduce(torch.cat([t.reshape(-1) for t in group]), "mean")
            offset = 0
            for t in group:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

    def all(self, flag: bool, device: torch.device) -> bool:
        """True when ``flag`` is true on every process."""
        if not self.active:
            return flag
        missing = torch.tensor([0.0 if flag else 1.0], device=device)
        return float(self._reduce(missing, "max")) == 0.0
