"""Putting a model in the state GradInit needs, and taking it back out exactly.

During GradInit a model must run deterministically in fp32 (dropout off, BatchNorm on batch
statistics without touching its running statistics, no activation checkpointing, an
attention kernel that supports the chosen Hessian-vector product), and afterwards it must
be as it was in every respect but the rescaled weights. (The caller's RNG state is kept by
:func:`seeded_rng`, around the whole run, data loading included.) :class:`PreparedModel` records all
of it on entry and restores all of it on exit, whether the run succeeded or not.

The trick that makes failure safe: every trainable tensor's storage is *swapped* for a
working copy (``param.data = copy``) for the duration of the run. The original storage is
never written until the run has succeeded; on failure, swapping it back restores the exact
original bits, and on success the final weights are copied into it, so the parameter
objects and their storage (which optimizers and DDP hold on to) stay the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .errors import GradInitError
from .scales import ParamInfo, compute_dtype
from .sharding import Shards, is_dtensor

# transformers keeps its attention choice in config._attn_implementation; these two
# run on torch ops that autograd can differentiate twice (SDPA on its math kernel).
_DOUBLE_BACKWARD_ATTENTION = ("eager", "sdpa")


def seeded_rng(device: torch.device, seed: int) -> contextlib.AbstractContextManager:
    """torch's generators seeded with ``seed`` inside, the caller's states restored outside."""

    @contextlib.contextmanager
    def fork() -> Iterator[None]:
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    return fork()


def model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


class PreparedModel(contextlib.AbstractContextManager):
    """Context manager: the model in GradInit's state inside, exactly restored outside.

    Inside, ``theta0[i]`` is the original tensor of ``params[i]`` itself, in its own dtype
    (widening bf16/fp16 to fp32 is exact, so GradInit reads it in fp32 without keeping an fp32
    copy of the model), and the model's parameters hold working copies in GradInit's precision
    (fp32 for half-precision models, else the parameter's own dtype) that the engine may
    overwrite. Call :meth:`commit` with the final values before leaving to keep them; leaving
    without it discards every change.

    With ``shards`` (an FSDP2 model) the sharded parameters cannot be swapped (FSDP keeps its
    own reference to their storage), so the run works in place on the local shards:
    ``theta0[i]`` is then a copy of the local shard (memory 1/world-size of the model), the
    local shards are written back from it on failure (bit for bit, every rank) or from the
    final values on success, and any ``.grad`` the parameters held is put aside and restored.
    """

    def __init__(self, model: nn.Module, params: list[ParamInfo], *, hvp: str, shards: Shards | None = None):
        self.model = model
        self.params = params
        self.hvp = hvp
        self.shards = shards
        self.theta0: list[torch.Tensor] = []
        self.original_dtypes: list[torch.dtype] = []
        self._final: dict[int, torch.Tensor] = {}
        self._stack = contextlib.ExitStack()

    # -- entering ---------------------------------------------------------------------------
    def __enter__(self) -> PreparedModel:
        meta = [n for n, p in self.model.named_parameters() if p.is_meta]
        if meta:
            raise GradInitError(
                f"{len(meta)} parameter(s) of {type(self.model).__name__} are on the meta device"
                f" (first: {meta[0]!r}): they hold no values to rescale. Materialise the model first"
                " (for example model.to_empty(device=...) followed by its own initialisation, or build"
                " it without init_empty_weights / device='meta')."
            )
        try:
            self._enter()
        except BaseException:
            self._stack.close()
            raise
        return self

    def _enter(self) -> None:
        stack = self._stack
        model = self.model
        device = model_device(model)

        swapped: list[tuple[Any, str, torch.Tensor]] = []
        # Registered before swapping: a failure half-way (out of memory) restores what was swapped.
        stack.callback(self._restore_tensors, swapped)
        self._swap_tensors(swapped)

        modes = {m: m.training for m in model.modules()}
        stack.callback(lambda: [setattr(m, "training", mode) for m, mode in modes.items()])
        model.eval()  # dropout (and every other training-only behaviour) off
        tracking = {}
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase):
                tracking[m] = m.track_running_stats
                # Train mode with tracking off: batch statistics, running statistics untouched.
                m.train()
                m.track_running_stats = False
        stack.callback(lambda: [setattr(m, "track_running_stats", t) for m, t in tracking.items()])

        checkpointing = {m: m.gradient_checkpointing for m in model.modules() if hasattr(m, "gradient_checkpointing")}
        for m in checkpointing:
            # MetaInit and LSUV evaluate by substituting tensors (functional_call), which a
            # recomputation in the backward pass would not see; and a pass without
            # recomputation is faster.
            m.gradient_checkpointing = False
        stack.callback(lambda: [setattr(m, "gradient_checkpointing", v) for m, v in checkpointing.items()])

        self._prepare_attention()

        stack.enter_context(torch.autocast(device_type=device.type, enabled=False))
        stack.enter_context(torch.enable_grad())

    def _swap_tensors(self, swapped: list[tuple[Any, str, torch.Tensor]]) -> None:
        """Replace every parameter's and buffer's storage by GradInit's working copy, recording
        each swap in ``swapped`` as it is made."""
        trainable = {id(info.param) for info in self.params}
        if self.shards is not None:
            self._enter_sharded(swapped)
        else:
            for info in self.params:
                original = info.param.data
                self.theta0.append(original)
                self.original_dtypes.append(original.dtype)
        seen: set[int] = set()
        if self.shards is not None:  # sharded parameters (frozen ones too) stay where they are
            seen.update(id(p) for p in self.model.parameters() if is_dtensor(p))
        for p in self.model.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            original = p.data
            dtype = compute_dtype(original.dtype) if original.is_floating_point() else original.dtype
            if id(p) in trainable:
                p.data = original.to(dtype, copy=True)
            elif dtype != original.dtype:
                p.data = original.to(dtype)
            else:
                continue
            swapped.append((p, "data", original))
        for module in self.model.modules():
            for name, buf in list(module._buffers.items()):
                if buf is None:
                    continue
                dtype = compute_dtype(buf.dtype) if buf.is_floating_point() else buf.dtype
                # A copy even when the dtype stays: whatever a forward pass writes into a
                # buffer is then dropped on exit.
                module._buffers[name] = buf.to(dtype, copy=True)
                swapped.append((module._buffers, name, buf))

    def _enter_sharded(self, swapped: list[tuple[Any, str, torch.Tensor]]) -> None:
        assert self.shards is not None
        grads = [(p, p.grad) for p in self.model.parameters() if p.grad is not None]
        for p, _ in grads:
            p.grad = None  # the sharded backward accumulates into .grad
        self._stack.callback(lambda: [setattr(p, "grad", g) for p, g in grads])
        for info, local in zip(self.params, self.shards.local, strict=True):
            copy = local.clone()
            self.theta0.append(copy)
            self.original_dtypes.append(local.dtype)
            swapped.append((info.param, "shard", copy))

    def _restore_tensors(self, swapped: list[tuple[Any, str, torch.Tensor]]) -> None:
        with torch.no_grad():
            for obj, name, original in reversed(swapped):
                final = self._final.get(id(obj)) if name in ("data", "shard") else None
                if name == "shard":
                    obj.to_local().copy_(original if final is None else final)
                    continue
                if final is not None:
                    original.copy_(final)
                if name == "data":
                    obj.data = original
                else:
                    obj[name] = original
            if self.shards is not None:
                self.shards.reshard()

    def _prepare_attention(self) -> None:
        config = getattr(self.model, "config", None)
        current = getattr(config, "_attn_implementation", None)
        if self.hvp != "exact" or current is None or current in _DOUBLE_BACKWARD_ATTENTION:
            return
        setter = getattr(self.model, "set_attn_implementation", None)
        if setter is None:
            raise GradInitError(
                f"hvp='exact' needs a double backward, which attention {current!r} lacks, and the model"
                " cannot switch kernels. Use hvp='finite_difference', or load the model with"
                " attn_implementation='sdpa' or 'eager'."
            )
        setter("sdpa")
        self._stack.callback(setter, current)

    # -- leaving ----------------------------------------------------------------------------
    def commit(self, final: list[torch.Tensor | None]) -> None:
        """Keep ``final[i]`` (already in the parameter's original dtype) as the value of
        ``params[i]`` on exit; ``None`` keeps the original value."""
        self._final = {
            id(info.param): value for info, value in zip(self.params, final, strict=True) if value is not None
        }

    def __exit__(self, *exc_info: object) -> None:
        if exc_info[0] is not None:
            self._final = {}
        self._stack.close()
