"""Functional evaluation of a model's loss at given parameter values, shared by the methods.

:class:`LossEvaluator` computes the loss and its gradient with respect to a list of parameters,
at their current values or at substituted ones (``torch.func.functional_call``, which leaves the
model untouched); :func:`fd_step_size` picks the step of a finite difference of gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

from .batches import Batch, LossFn, model_loss
from .config import FdScheme
from .errors import GradInitError
from .sharding import Shards

Tensors = list[torch.Tensor]


class _LossModule(nn.Module):
    """``batch -> loss`` as a module, so ``functional_call`` can substitute the model's
    parameters even when a user's ``loss_fn`` calls the model itself."""

    def __init__(self, model: nn.Module, loss_fn: LossFn | None):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Batch) -> torch.Tensor:
        return model_loss(self.model, batch, self.loss_fn)


class LossEvaluator:
    """Loss and gradient of a model with respect to a list of its parameters, at the
    parameters' current values or at substituted values (by ``torch.func.functional_call``,
    which leaves the model untouched).

    With ``compile=True`` first-order evaluations at the parameters' current values run
    through ``torch.compile`` (compiled on first use; double backward and substituted values
    stay eager, since compiled graphs have no double backward).

    With ``shards`` (an FSDP2 model, see :mod:`hf_gradinit.sharding`) ``params`` are the local
    shards the steps write into, and :meth:`grad` is the sharded backward: the local shards
    of the gradient, already averaged over processes. Substituted values and double backward
    are not available there.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str],
        params: Sequence[nn.Parameter],
        loss_fn: LossFn | None,
        *,
        compile: bool = False,
        shards: Shards | None = None,
    ):
        self.model = model
        self.names = list(names)
        self.shards = shards
        # The tensors the steps move in place: the parameters, or their local shards.
        self.params = list(params) if shards is None else list(shards.local)
        self._module = _LossModule(model, loss_fn)
        self._compiled = torch.compile(self._module) if compile else None
        self._keys = [f"model.{n}" for n in self.names]
        # A tensor read in place of one module's shared parameter (see holding()), and its gradient.
        self._held: tuple[torch.Tensor, ...] = ()
        self.held_grads: Tensors = []

    def loss(self, batch: Batch, at: Tensors | None = None) -> torch.Tensor:
        if at is None:
            return self._module(batch)
        # strict=False: only the trainable tensors are substituted; tie_weights (the default)
        # makes every alias of a tied tensor see the one value passed under its first name.
        return functional_call(self._module, dict(zip(self._keys, at, strict=True)), (batch,), strict=False)

    def grad(self, batch: Batch, at: Tensors | None = None, create_graph: bool = False) -> tuple[torch.Tensor, Tensors]:
        """``(L, dL/dtheta)`` on ``batch``, at the model's parameters or at ``at``."""
        if self.shards is not None:
            return self._sharded_grad(batch, at, create_graph)
        if at is None and not create_graph and self._compiled is not None and not self._held:
            leaves, loss = self.params, self._compiled(batch)
        else:
            leaves = self.params if at is None else [t.detach().requires_grad_(True) for t in at]
            loss = self.loss(batch, leaves)
        _require_graph(loss)
        grads = torch.autograd.grad(loss, [*leaves, *self._held], create_graph=create_graph, materialize_grads=True)
        self.held_grads = list(grads[len(leaves) :])
        grads = grads[: len(leaves)]
        if create_graph:
            return loss, list(grads)
        return loss.detach(), _writable(grads)

    def _sharded_grad(self, batch: Batch, at: Tensors | None, create_graph: bool) -> tuple[torch.Tensor, Tensors]:
        if at is not None or create_graph or self._held:
            raise GradInitError(
                "On sharded parameters only first-order gradients at the parameters' own values are available"
                " (FSDP's all-gather ignores substituted tensors and has no double backward)."
            )
        loss = self._module(batch)
        _require_graph(loss)
        loss.backward()
        return loss.detach(), self.shards.take_gradients()

    @contextlib.contextmanager
    def holding(self, module: nn.Module, name: str, value: torch.Tensor):
        """Inside, ``module.<name>`` reads ``value`` (a leaf of its own) instead of the tensor it
        shares with other modules; :meth:`grad` also returns its gradient in ``held_grads``.
        The shared parameter is put back on leaving, whatever happens."""
        if self.shards is not None:
            raise GradInitError("A held tensor cannot replace a sharded parameter (FSDP all-gathers its own).")
        original = module._parameters[name]
        leaf = nn.Parameter(value.detach(), requires_grad=True)
        module._parameters[name] = leaf
        self._held = (leaf,)
        try:
            yield leaf
        finally:
            module._parameters[name] = original
            self._held = ()
            self.held_grads = []


def _require_graph(loss: torch.Tensor) -> None:
    if not loss.requires_grad:
        raise GradInitError(
            "The loss does not depend on the model's parameters (it has no gradient): loss_fn returned a"
            " detached value (.detach(), .item(), a new tensor) or computed it under torch.no_grad()."
            " Return the loss tensor itself; the model was restored."
        )


def _writable(grads: Sequence[torch.Tensor]) -> Tensors:
    """The gradients, each with memory of its own, so the steps may update them in place.

    Autograd may hand out one tensor for several parameters (``x + a + b``), a view into
    another parameter's gradient (a slice of a ``torch.cat``), or a broadcast tensor with
    stride 0 (a parameter that only enters as ``0 * p.sum()``); such gradients are cloned.
    Checking costs a pointer per tensor; typical models clone nothing.
    """
    seen: set[int] = set()
    out = []
    for g in grads:
        ptr = g.untyped_storage().data_ptr()
        if ptr in seen or torch._debug_has_internal_overlap(g) != 0:
            g = g.clone(memory_format=torch.contiguous_format)
            ptr = g.untyped_storage().data_ptr()
        seen.add(ptr)
        out.append(g)
    return out


def _partial_norm(grads: Tensors, p: int) -> torch.Tensor:
    """``sum |g|`` (``p = 1``) or ``sum g^2`` (``p = 2``) over all tensors, in float64: what adds
    up across shards."""
    if not grads:
        return torch.zeros((), dtype=torch.float64)
    # Sums of non-negative terms: each tensor's norm is accurate in its own dtype (no float64
    # upcast of every gradient); only the total over tensors is taken in float64.
    total = torch.stack(torch._foreach_norm(grads, p)).to(torch.float64)
    return total.sum() if p == 1 else total.square().sum()


def grad_norm(grads: Tensors, p: int, shards: Shards | None = None) -> torch.Tensor:
    """``||g||_p`` over all tensors together (``p`` is 1 or 2), as a 0-dim tensor; with
    ``shards``, ``grads`` are local shards and the norm is that of the whole tensors."""
    if not grads:
        return torch.zeros(())
    partial = _partial_norm(grads, p)
    if shards is not None:
        partial = shards.sum(partial)
    return partial if p == 1 else partial.sqrt()


def fd_step_size(
    theta: Tensors,
    direction: Tensors,
    rel: float | None = None,
    scheme: FdScheme = "central",
    shards: Shards | None = None,
) -> float:
    """Step ``eps`` of a finite difference of gradients along ``direction``.

    The perturbation ``eps v`` is ``rel * max(||theta||_2, 1)`` long. With ``u`` the machine
    epsilon of the parameters' dtype, the rounding error of a difference quotient grows like
    ``u / eps``, and its truncation error like ``eps`` for a forward difference
    ``(grad(theta + eps v) - grad(theta)) / eps`` and like ``eps^2`` for a central one
    ``(grad(theta + eps v) - grad(theta - eps v)) / 2 eps``. The default ``rel`` balances
    the two: ``u^(1/2)`` (about 3e-4 in float32) for ``"forward"``, ``u^(1/3)`` (about 5e-3)
    for ``"central"``. With ``shards`` the norms are those of the whole tensors.
    """
    if rel is None:
        rel = torch.finfo(theta[0].dtype).eps ** (0.5 if scheme == "forward" else 1.0 / 3.0)
    # One device-to-host transfer (and on shards one all-reduce) for both norms.
    squares = torch.stack([_partial_norm(theta, 2), _partial_norm(direction, 2)])
    if shards is not None:
        squares = shards.sum(squares)
    theta_norm, v_norm = squares.sqrt().tolist()
    if v_norm == 0.0:
        return 0.0
    return rel * max(theta_norm, 1.0) / v_norm


def _math_sdpa() -> contextlib.AbstractContextManager:
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])
