"""Data-driven initialisation of an FSDP2 model (``fully_shard``) on its local shards.

GradInit's state is one scalar per tensor, and everything else it computes per iteration is
elementwise on parameters (the virtual step, ``theta + eps v``, the reset to ``alpha theta0``)
or a sum over elements (norms, the per-tensor products ``<grad, theta0>``). On a sharded model
each process therefore works on its own shard of every tensor, and every sum is a local
partial sum followed by one all-reduce. :class:`Shards` holds what that needs:

* the local shard of each parameter (``DTensor.to_local()``): the storage FSDP all-gathers
  from before each forward, so an in-place write there is what the next forward sees
  (replacing ``param.data`` is not: FSDP keeps its own reference to the sharded storage);
* gradients from the sharded backward (``loss.backward()``; ``p.grad`` is then a DTensor
  whose local shard FSDP's reduce-scatter has already averaged over the processes, as in a
  training step). ``torch.autograd.grad`` returns zeros for FSDP's sharded parameters, and
  ``functional_call`` is ignored by FSDP's all-gather, so neither is used;
* :meth:`Shards.sum`, the all-reduce of partial sums, through
  :class:`~hf_gradinit.distributed.Collective` (a failure on one rank still reaches the
  others within seconds);
* :meth:`Shards.reshard`: a forward without backward leaves FSDP's root module unsharded
  (``reshard_after_forward=False`` is the root's default), and a write into the shards would
  then not be seen by the next forward; the run reshards on entry and after every pass.

What is refused, with the route that works: FSDP1 (``FullyShardedDataParallel``: flat
parameters, no per-tensor identity), DTensors that are not FSDP2 parameters (tensor
parallelism: their gradients are not averaged the same way), meshes that do not span every
process once (HSDP), sharded parameters that are not fp32 (keep fp32 shards and compute in
bf16 with ``MixedPrecisionPolicy``), and, in GradInit, the options that need substituted
tensors or a double backward (``hvp="exact"``, ``tied_lookahead="input_only"``,
``compile=True``). Methods that evaluate by substituting tensors (LSUV, MetaInit) are refused
by the driver.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .distributed import Collective
from .errors import GradInitError


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return None
    return DTensor


def _fsdp_module_type() -> type | None:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch < 2.6
        return None
    return FSDPModule


def is_dtensor(tensor: torch.Tensor) -> bool:
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(tensor, dtensor)


def is_fsdp2(model: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``model`` itself (it is then an ``FSDPModule``)."""
    fsdp_module = _fsdp_module_type()
    return fsdp_module is not None and isinstance(model, fsdp_module)


def is_fsdp1(model: nn.Module) -> bool:
    """Whether ``model`` is, or contains, an FSDP1 ``FullyShardedDataParallel`` wrapper."""
    return any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules())


def sharded_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters of ``model`` that are DTensors (sharded or distributed)."""
    dtensor = _dtensor_type()
    if dtensor is None:
        return []
    return [n for n, p in model.named_parameters() if isinstance(p, dtensor)]


def reshard(model: nn.Module) -> None:
    """Reshard every FSDP2 module of ``model`` (a no-op for those already sharded)."""
    fsdp_module = _fsdp_module_type()
    if fsdp_module is None:
        return
    for m in model.modules():
        if isinstance(m, fsdp_module):
            m.reshard()


def check_shardable(model: nn.Module, method: str, *, supported: bool) -> bool:
    """Whether ``model`` holds FSDP2-sharded parameters that ``method`` may run on; raises a
    :class:`GradInitError` naming the working route for every layout it cannot run on."""
    if is_fsdp1(model):
        raise GradInitError(
            f"{method} cannot run on an FSDP1 model (FullyShardedDataParallel flattens the parameters into"
            " one buffer, so no tensor has a scale of its own). Shard with FSDP2 instead (fully_shard;"
            " fsdp_version: 2 in accelerate / TrainingArguments), or run it before wrapping the model."
        )
    # A forward without backward leaves FSDP's root unsharded, its parameters plain tensors
    # for the moment: reshard first, or a sharded model would pass for a plain one.
    reshard(model)
    names = sharded_parameter_names(model)
    if not names:
        return False
    if not supported:
        raise GradInitError(
            f"{method} cannot run on sharded parameters: {len(names)} parameter(s) of {type(model).__name__} are"
            f" DTensors (first: {names[0]!r}), and {method} evaluates the model on substituted tensors, which"
            " FSDP's all-gather ignores. Run it on the model before sharding it (every process builds the same"
            " model, so the result is the same on all), or through Trainer(model_init=make_model_init(...)),"
            " which initialises before wrapping. GradInit runs on FSDP2 models directly."
        )
    if not is_fsdp2(model):
        raise GradInitError(
            f"{method} found {len(names)} DTensor parameter(s) in {type(model).__name__} (first: {names[0]!r}),"
            " but the module it was given is not an FSDP2 root (fully_shard was not applied to it): pass the"
            " module you called fully_shard on last (the root). Tensor-parallel DTensors are not supported;"
            " run it before parallelising the model."
        )
    return True


class Shards:
    """The local shards of an FSDP2 model's parameters and the sums across its processes.

    Args:
        model: The FSDP2 root module.
        params: The parameters the run works on (DTensors sharded on dimension 0).
        comm: The collective of the run; its processes must be the mesh's.
    """

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter], comm: Collective):
        self.model = model
        self.params = list(params)
        self.comm = comm
        for p in self.params:
            mesh = p.device_mesh
            if mesh.ndim != 1 or mesh.size() != comm.world_size:
                raise GradInitError(
                    f"Sharded parameters on a {tuple(mesh.shape)} device mesh across {comm.world_size} process(es):"
                    " only a one-dimensional FSDP2 mesh over every process is supported (not HSDP, not a mesh"
                    " of part of the processes). Run the initialiser before sharding, or shard over all ranks."
                )
            if p.dtype != torch.float32:
                raise GradInitError(
                    f"Sharded parameter of dtype {p.dtype}: GradInit writes its working values into the shards,"
                    " which must be fp32 so that alpha * theta0 and the virtual steps are not rounded. Keep the"
                    " parameters in fp32 and compute in bf16 with fully_shard(mp_policy=MixedPrecisionPolicy("
                    "param_dtype=torch.bfloat16)), or run it before sharding."
                )
        reshard(model)
        # The storage FSDP all-gathers from: a view that stays valid for the model's lifetime.
        self.local = [p.to_local() for p in self.params]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over processes of per-process partial sums (one all-reduce)."""
        return self.comm.sum(tensor)

    def reshard(self) -> None:
        reshard(self.model)

    def take_gradients(self) -> list[torch.Tensor]:
        """The local shards of the gradients the last backward left in ``p.grad`` (already
        averaged over processes by FSDP's reduce-scatter), removed from the parameters; zeros
        for a parameter the loss did not reach."""
        grads = []
        for p, local in zip(self.params, self.local, strict=True):
            g = p.grad
            p.grad = None
            # Copied: the local gradient is a view into FSDP's reduction buffer, which may be
            # larger than the shard (gloo has no reduce-scatter, so it all-reduces the whole
            # gradient and slices it); a view would keep the whole buffer alive.
            grads.append(torch.zeros_like(local) if g is None else g.to_local().clone())
        self.reshard()
        return grads
