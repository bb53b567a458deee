"""Averaging across processes, so every rank of a multi-process run learns the same scales.

Under DDP each process holds a shard of every batch. GradInit then does what a DDP training
step does: it averages the full gradient ``g`` across processes before forming the virtual
step and the gradient norm, and averages the scale gradients before the scale update. Every
rank thus applies the same update from the same state and ends with bit-identical weights,
equal (up to rounding) to a single-process run over the union of the shards. The averages are
``torch.distributed.all_reduce`` on the default process group, whoever set it up (the Trainer,
``accelerate launch``, or the user's own ``torchrun`` + ``init_process_group``), so they never
depend on accelerate's state (``accelerate.utils.reduce`` silently returns its input unchanged
when that state is not distributed, which would let the ranks drift apart without an error).

**Failures reach every rank.** A rank that fails (an exception in its data or its loss, Ctrl-C)
would leave the others blocked in their next collective until the process group's timeout
(30 minutes by default). So a failing rank writes its error into the process group's store,
and every collective here waits for its peers while polling that store: the other ranks raise
:class:`PeerFailure` within a fraction of a second, each restoring its own model, and all of
them say which rank failed and why. The process group itself is then unusable (a collective
is left half-done), as after any failure of a distributed job.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator

import torch
import torch.distributed as dist

from .errors import GradInitError

_RUN_IDS = itertools.count()


class PeerFailure(GradInitError):
    """Another process of a multi-process run failed; this one stopped and restored its model."""


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

    def __init__(self, enabled: bool | None = None, poll_s: float = 0.005):
        self.world_size = world_size() if enabled is not False else 1
        self.active = self.world_size > 1
        self.poll_s = poll_s
        self._store = None
        if self.active:
            # Every rank creates its Collectives in the same order, so they agree on the key.
            self._key = f"hf_gradinit/failed/{next(_RUN_IDS)}"
            self.rank = dist.get_rank()
            try:
                self._store = dist.distributed_c10d._get_default_store()
            except (AttributeError, RuntimeError, ValueError):  # pragma: no cover - no store: plain waits
                self._store = None

    def _reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        out = tensor.clone()
        work = dist.all_reduce(out, op=dist.ReduceOp.MAX if reduction == "max" else dist.ReduceOp.SUM, async_op=True)
        self._wait(work)
        return out / self.world_size if reduction == "mean" else out

    def _wait(self, work: dist.Work) -> None:
        if self._store is None:
            work.wait()
            return
        while not work.is_completed():
            self.raise_if_a_peer_failed()
            time.sleep(self.poll_s)
        work.wait()

    def raise_if_a_peer_failed(self) -> None:
        if self._store is not None and self._store.check([self._key]):
            message = self._store.get(self._key).decode(errors="replace")
            raise PeerFailure(f"{message}\nThis process (rank {self.rank}) stopped too and restored its model.")

    def fail(self, message: str) -> None:
        """Tell the other ranks this one failed (the first failure's message is kept)."""
        if self._store is None:
            return
        with contextlib.suppress(Exception):
            if not self._store.check([self._key]):
                self._store.set(self._key, f"GradInit failed on rank {self.rank}: {message}")

    @contextlib.contextmanager
    def failures_shared(self) -> Iterator[None]:
        """Inside, an exception on this rank is announced to the others before it propagates."""
        try:
            yield
        except PeerFailure:
            raise
        except BaseException as err:
            if self.active:
                self.fail(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            raise

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._reduce(tensor, "mean") if self.active else tensor

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over processes (partial sums of sharded tensors, see :mod:`hf_gradinit.sharding`)."""
        return self._reduce(tensor, "sum") if self.active else tensor

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

    def max(self, value: float, device: torch.device) -> float:
        """The largest ``value`` over the processes."""
        if not self.active:
            return value
        return float(self._reduce(torch.tensor([float(value)], device=device), "max"))

    def all(self, flag: bool, device: torch.device) -> bool:
        """True when ``flag`` is true on every process."""
        if not self.active:
            return flag
        missing = torch.tensor([0.0 if flag else 1.0], device=device)
        return float(self._reduce(missing, "max")) == 0.0
