"""The GradInit objective, its constraint, and their gradients with respect to the scales.

Every quantity GradInit optimises is a function ``f(theta(alpha))`` with ``theta_i = alpha_i
theta0_i``, so its gradient with respect to a scale is ``<df/dtheta_i, theta0_i>``
(:func:`scale_gradients`). What changes between the two kinds of step is ``df/dtheta``:

* objective step: ``f = L(S~; theta') / eta`` with ``theta' = c theta - eta A[g]`` and the
  virtual step ``A[g]`` held constant (the paper's first-order approximation), so
  ``df/dtheta = (c / eta) grad L(S~; theta')``: one more gradient, no second order;
* constraint step: ``f = ||g||_p`` with ``g = grad L(S; theta)``, so ``df/dtheta = H v``
  with ``v = d||g||_p / dg`` (``g/||g||_2`` or ``sign(g)``): a Hessian-vector product, from a
  double backward (:func:`hvp_exact`) or from central differences of two gradients
  (:func:`hvp_finite_difference`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

from .config import GradInitConfig
from .data import Batch, LossFn, model_loss

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
    which leaves the model untouched)."""

    def __init__(self, model: nn.Module, names: Sequence[str], params: Sequence[nn.Parameter], loss_fn: LossFn | None):
        self.model = model
        self.names = list(names)
        self.params = list(params)
        self._module = _LossModule(model, loss_fn)
        self._keys = [f"model.{n}" for n in self.names]

    def loss(self, batch: Batch, at: Tensors | None = None) -> torch.Tensor:
        if at is None:
            return self._module(batch)
        # strict=False: only the trainable tensors are substituted; tie_weights (the default)
        # makes every alias of a tied tensor see the one value passed under its first name.
        return functional_call(self._module, dict(zip(self._keys, at, strict=True)), (batch,), strict=False)

    def grad(self, batch: Batch, at: Tensors | None = None, create_graph: bool = False) -> tuple[torch.Tensor, Tensors]:
        """``(L, dL/dtheta)`` on ``batch``, at the model's parameters or at ``at``."""
        leaves = self.params if at is None else [t.detach().requires_grad_(True) for t in at]
        loss = self.loss(batch, leaves)
        grads = torch.autograd.grad(loss, leaves, create_graph=create_graph, materialize_grads=True)
        return loss.detach() if not create_graph else loss, list(grads)


def grad_norm(grads: Tensors, p: int) -> torch.Tensor:
    """``||g||_p`` over all tensors together (``p`` is 1 or 2), as a 0-dim tensor."""
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads, p)
    total = torch.stack([n.to(torch.float64) for n in norms])
    return total.sum() if p == 1 else total.square().sum().sqrt()


def norm_direction(grads: Tensors, gnorm: torch.Tensor, p: int) -> Tensors:
    """``v = d||g||_p / dg``: ``g / ||g||_2`` for ``p = 2``, ``sign(g)`` for ``p = 1``."""
    if p == 1:
        return [g.sign() for g in grads]
    denom = float(gnorm)
    if denom == 0.0:
        return [torch.zeros_like(g) for g in grads]
    return torch._foreach_div(grads, denom)


def virtual_step(theta: Tensors, grads: Tensors, gnorm: torch.Tensor, config: GradInitConfig) -> tuple[Tensors, float]:
    """The first step of the target optimizer from ``theta``: ``(theta', c)``.

    ``theta' = c theta - eta A[g]``, where ``A[g]`` is ``g`` or ``g / ||g||_2`` (SGD), or
    ``sign(g)`` (Adam and AdamW: the first Adam update ``m / sqrt(v)`` with epsilon ignored).
    ``c = 1 - eta wd`` is decoupled weight decay (SGD, AdamW); Adam's coupled decay sits inside
    the sign, ``sign(g + wd theta)``, and ``c = 1``. ``A[g]`` is detached: GradInit's
    objective steps are first order.
    """
    eta, wd = float(config.eta), float(config.weight_decay)
    with torch.no_grad():
        if config.target == "sgd":
            if config.normalize_step:
                denom = float(gnorm)
                step = torch._foreach_div(grads, denom) if denom > 0 else [torch.zeros_like(g) for g in grads]
            else:
                step = grads
        elif config.target == "adam" and wd > 0:
            step = [torch.sign(g + wd * t) for g, t in zip(grads, theta, strict=True)]
        else:
            step = [g.sign() for g in grads]
        decay = 1.0 if config.target == "adam" else 1.0 - eta * wd
        theta_prime = torch._foreach_mul(theta, decay) if decay != 1.0 else [t.clone() for t in theta]
        torch._foreach_add_(theta_prime, step, alpha=-eta)
    return theta_prime, decay


def scale_gradients(grads: Tensors, theta0: Tensors) -> torch.Tensor:
    """``d f / d alpha_i = <d f / d theta_i, theta0_i>`` for each pair, as a float64 vector."""
    if not grads:
        return torch.zeros(0, dtype=torch.float64)
    return torch.stack(
        [torch.vdot(g.reshape(-1), t.reshape(-1)).to(torch.float64) for g, t in zip(grads, theta0, strict=True)]
    )


def fd_step_size(theta: Tensors, direction: Tensors, rel: float | None = None) -> float:
    """Step ``eps`` of the central difference ``(grad(theta + eps v) - grad(theta - eps v)) / 2 eps``.

    The perturbation is ``rel * ||theta||_2`` long. The truncation error of a central
    difference grows like ``eps^2`` and its rounding error like ``u / eps`` (``u`` the unit
    round-off of the parameters' dtype), so ``rel = u^(1/3)`` balances them: about 5e-3 in
    float32 and 6e-6 in float64.
    """
    if rel is None:
        rel = torch.finfo(theta[0].dtype).eps ** (1.0 / 3.0)
    theta_norm = float(grad_norm(theta, 2))
    v_norm = float(grad_norm(direction, 2))
    if v_norm == 0.0:
        return 0.0
    return rel * max(theta_norm, 1.0) / v_norm


def hvp_finite_difference(
    evaluator: LossEvaluator,
    batch: Batch,
    theta: Tensors,
    direction: Tensors,
    rel: float | None = None,
) -> Tensors:
    """``H v`` at ``theta`` from two gradient evaluations at ``theta +- eps v`` (first order
    only, so every attention kernel works)."""
    eps = fd_step_size(theta, direction, rel)
    if eps == 0.0:
        return [torch.zeros_like(t) for t in theta]
    with torch.no_grad():
        plus = torch._foreach_add(theta, direction, alpha=eps)
    _, g_plus = evaluator.grad(batch, at=plus)
    del plus
    with torch.no_grad():
        minus = torch._foreach_add(theta, direction, alpha=-eps)
    _, g_minus = evaluator.grad(batch, at=minus)
    del minus
    with torch.no_grad():
        torch._foreach_sub_(g_plus, g_minus)
        torch._foreach_div_(g_plus, 2.0 * eps)
    return g_plus


def hvp_exact(evaluator: LossEvaluator, batch: Batch, direction: Tensors) -> Tensors:
    """``H v`` at the model's parameters by double backward: the gradient of ``<g, v>`` with
    ``v`` held constant. With ``v = d||g||_p / dg`` that is ``d||g||_p / dtheta``.

    ``v`` comes from outside (in a multi-process run, from the gradient averaged over all
    processes), so each process contributes the product of its own shard's Hessian. The
    forward pass runs SDPA on its math kernel, the only one with a double backward.
    """
    with _math_sdpa():
        _, grads = evaluator.grad(batch, create_graph=True)
        dot = sum(torch.vdot(g.reshape(-1), v.reshape(-1)) for g, v in zip(grads, direction, strict=True))
        hv = torch.autograd.grad(dot, evaluator.params, materialize_grads=True)
    return [h.detach() for h in hv]


def objective_scale_gradient(
    evaluator: LossEvaluator,
    batch_tilde: Batch,
    grads: Tensors,
    gnorm: torch.Tensor,
    theta0: Tensors,
    scaled_idx: Sequence[int],
    config: GradInitConfig,
) -> tuple[float, torch.Tensor]:
    """Objective step: ``(L(S~; theta'), d/dalpha [L(S~; theta') / eta])`` with ``A[g]`` constant.

    ``grads`` is ``g = grad L(S; theta)`` at the model's parameters; the list is emptied once
    used, so its memory is freed before the second gradient is taken. ``theta0`` holds the
    original values of the tensors listed by ``scaled_idx``.
    """
    theta = [p.detach() for p in evaluator.params]
    theta_prime, decay = virtual_step(theta, grads, gnorm, config)
    grads.clear()
    lookahead, d_theta = evaluator.grad(batch_tilde, at=theta_prime)
    del theta_prime
    scale_grad = scale_gradients([d_theta[i] for i in scaled_idx], theta0)
    return float(lookahead), scale_grad * (decay / float(config.eta))


def constraint_scale_gradient(
    evaluator: LossEvaluator,
    batch: Batch,
    grads: Tensors,
    gnorm: torch.Tensor,
    theta0: Tensors,
    scaled_idx: Sequence[int],
    config: GradInitConfig,
) -> torch.Tensor:
    """Constraint step: ``d ||g||_p / d alpha`` on ``S``, with ``H v`` from ``config.hvp``.

    ``grads`` is ``g`` (averaged over processes in a multi-process run) and ``gnorm`` its
    ``p``-norm; the list is emptied once used.
    """
    direction = norm_direction(grads, gnorm, config.norm_order)
    grads.clear()
    if config.hvp == "exact":
        d_theta = hvp_exact(evaluator, batch, direction)
    else:
        theta = [q.detach() for q in evaluator.params]
        d_theta = hvp_finite_difference(evaluator, batch, theta, direction, config.fd_eps)
    return scale_gradients([d_theta[i] for i in scaled_idx], theta0)


def _math_sdpa() -> contextlib.AbstractContextManager:
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])
