"""The GradInit objective, its constraint, and their gradients with respect to the scales.

Every quantity GradInit optimises is a function ``f(theta(alpha))`` with ``theta_i = alpha_i
theta0_i``, so its gradient with respect to a scale is ``<df/dtheta_i, theta0_i>``
(:func:`scale_gradients`). What changes between the two kinds of step is ``df/dtheta``:

* objective step: ``f = L(S~; theta') / eta`` with ``theta' = c theta - eta A[g]`` and the
  virtual step ``A[g]`` held constant (the paper's first-order approximation), so
  ``df/dtheta = (c / eta) grad L(S~; theta')``: one more gradient, no second order;
* constraint step: ``f = ||g||_p`` with ``g = grad L(S; theta)``, so ``df/dtheta = H v``
  with ``v = d||g||_p / dg`` (``g/||g||_2`` or ``sign(g)``): a Hessian-vector product, from a
  double backward (:func:`hvp_exact`) or from a difference of gradients
  (:func:`hvp_finite_difference`).

The steps evaluate the model at ``theta'`` and ``theta + eps v`` by writing those values into
its parameters in place: during a run they hold GradInit's own working copies (see
:class:`hf_gradinit.model_state.PreparedModel`), which the engine resets to ``alpha theta0``
after every iteration. That costs a few multi-tensor kernels, where substituting tensors with
``functional_call`` costs per-tensor Python on every evaluation and a copy of the parameters.
Every per-tensor operation is a ``torch._foreach_*`` kernel over all tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...batches import Batch
from ...config import FdScheme
from ...functional import LossEvaluator, Tensors, _math_sdpa, fd_step_size
from .config import GradInitConfig


def norm_direction(grads: Tensors, gnorm: torch.Tensor | float, p: int) -> Tensors:
    """``v = d||g||_p / dg``: ``g / ||g||_2`` for ``p = 2``, ``sign(g)`` for ``p = 1``."""
    if p == 1:
        return list(torch._foreach_sign(grads))
    denom = float(gnorm)
    if denom == 0.0:
        return [torch.zeros_like(g) for g in grads]
    return list(torch._foreach_div(grads, denom))


def virtual_step_(theta: Tensors, grads: Tensors, gnorm: torch.Tensor | float, config: GradInitConfig) -> float:
    """Take the first step of the target optimizer in place: ``theta <- c theta - eta A[g]``;
    returns ``c``.

    ``A[g]`` is ``g`` or ``g / ||g||_2`` (SGD), or ``sign(g)`` (Adam and AdamW: the first
    Adam update ``m / sqrt(v)`` with epsilon ignored). ``c = 1 - eta wd`` is decoupled weight
    decay (SGD, AdamW); Adam's coupled decay sits inside the sign, ``sign(g + wd theta)``, and
    ``c = 1``. ``A[g]`` is detached: GradInit's objective steps are first order. For Adam the
    sign is taken in place, so ``grads`` is consumed.
    """
    eta, wd = float(config.eta), float(config.weight_decay)
    decay = 1.0 if config.target == "adam" else 1.0 - eta * wd
    with torch.no_grad():
        size = eta
        if config.target == "sgd":
            if config.normalize_step:
                denom = float(gnorm)
                size = eta / denom if denom > 0 else 0.0
        else:
            if config.target == "adam" and wd > 0:
                torch._foreach_add_(grads, theta, alpha=wd)
            torch._foreach_sign_(grads)
        if decay != 1.0:
            torch._foreach_mul_(theta, decay)
        torch._foreach_add_(theta, grads, alpha=-size)
    return decay


def virtual_step(
    theta: Tensors, grads: Tensors, gnorm: torch.Tensor | float, config: GradInitConfig
) -> tuple[Tensors, float]:
    """:func:`virtual_step_` on a copy: ``(theta', c)``, ``theta`` unchanged."""
    theta_prime = [t.detach().clone() for t in theta]
    return theta_prime, virtual_step_(theta_prime, grads, gnorm, config)


def scale_gradients(grads: Tensors, theta0: Tensors) -> torch.Tensor:
    """``d f / d alpha_i = <d f / d theta_i, theta0_i>`` for each pair, as a float64 vector.

    Batched: products, then each tensor's sum as the difference of the 1-norms of its positive
    and negative parts, accumulated in float64 (more accurate than a float32 ``vdot``; checked
    in the tests). A handful of multi-tensor kernels instead of one reduction per tensor,
    which on a GPU is the difference between the engine's bookkeeping costing a fraction of
    a pass or more than one. ``grads`` is overwritten.
    """
    if not grads:
        return torch.zeros(0, dtype=torch.float64)
    with torch.no_grad():
        torch._foreach_mul_(grads, theta0)
        positive = torch._foreach_clamp_min(grads, 0.0)
        torch._foreach_sub_(grads, positive)
        pos = torch.stack(torch._foreach_norm(positive, 1, dtype=torch.float64))
        neg = torch.stack(torch._foreach_norm(grads, 1, dtype=torch.float64))
    return pos - neg


def hvp_finite_difference(
    evaluator: LossEvaluator,
    batch: Batch,
    direction: Tensors,
    rel: float | None = None,
    *,
    grad_at_theta: Tensors | None = None,
) -> Tensors:
    """``H v`` at the model's parameters ``theta`` from gradients only (first order, so every
    attention kernel works). Moves the parameters (to ``theta + eps v`` or ``theta - eps v``);
    the caller restores them.

    With ``grad_at_theta`` (the gradient at ``theta`` on ``batch``, which a constraint step
    has already computed) it is the forward difference ``(grad(theta + eps v) - g) / eps``:
    one more gradient evaluation, and the list ``direction`` is emptied before it (its memory
    freed). Without it, the central difference of two gradients at ``theta +- eps v``: two
    more evaluations, a smaller truncation error. The step ``eps`` comes from
    :func:`fd_step_size`.
    """
    params = evaluator.params
    scheme: FdScheme = "forward" if grad_at_theta is not None else "central"
    with torch.no_grad():
        eps = fd_step_size(params, direction, rel, scheme, evaluator.shards)
    if eps == 0.0:
        return [torch.zeros_like(t) for t in params]
    with torch.no_grad():
        torch._foreach_add_(params, direction, alpha=eps)
    if grad_at_theta is not None:
        direction.clear()  # not needed again: free it before the pass
    _, g_plus = evaluator.grad(batch)
    if grad_at_theta is not None:
        base, denom = grad_at_theta, eps
    else:
        with torch.no_grad():
            torch._foreach_add_(params, direction, alpha=-2.0 * eps)
        _, base = evaluator.grad(batch)
        denom = 2.0 * eps
    with torch.no_grad():
        torch._foreach_sub_(g_plus, base)
        torch._foreach_mul_(g_plus, 1.0 / denom)
    return g_plus


def hvp_exact(evaluator: LossEvaluator, batch: Batch, direction: Tensors) -> Tensors:
    """``H v`` at the model's parameters by double backward: the vector-Jacobian product of
    the gradient with ``v`` (``H`` is symmetric), ``v`` held constant. With ``v = d||g||_p /
    dg`` that is ``d||g||_p / dtheta``.

    ``v`` comes from outside (in a multi-process run, from the gradient averaged over all
    processes), so each process contributes the product of its own shard's Hessian. The
    forward pass runs SDPA on its math kernel, the only one with a double backward.
    """
    with _math_sdpa():
        _, grads = evaluator.grad(batch, create_graph=True)
        # A gradient without a graph does not depend on the parameters (a parameter entering
        # the loss linearly, or not at all): its rows of H are zero.
        pairs = [(g, v) for g, v in zip(grads, direction, strict=True) if g.requires_grad]
        if not pairs:
            return [torch.zeros_like(p) for p in evaluator.params]
        outputs, vectors = zip(*pairs, strict=True)
        hv = torch.autograd.grad(
            outputs, evaluator.params, grad_outputs=vectors, allow_unused=True, materialize_grads=True
        )
    return [h.detach() for h in hv]


def objective_scale_gradient(
    evaluator: LossEvaluator,
    batch_tilde: Batch,
    grads: Tensors,
    gnorm: torch.Tensor | float,
    theta0: Tensors,
    scaled_idx: Sequence[int],
    config: GradInitConfig,
    held: tuple[nn.Module, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Objective step: ``(L(S~; theta'), d/dalpha [L(S~; theta') / eta])`` with ``A[g]`` constant.

    ``held = (module, i)`` is ``tied_lookahead="input_only"``: the look-ahead moves parameter
    ``i`` everywhere but in ``module`` (the output projection tied to it), which keeps reading
    ``theta(alpha)``; the scale gradient then sums both paths, ``c dL/dtheta'_i + dL/dtheta_out``.

    ``grads`` is ``g = grad L(S; theta)`` at the model's parameters; the list is emptied once
    used, so its memory is freed before the second gradient is taken. ``gnorm`` (``||g||_p``)
    may be a Python float the caller already has, which saves a device synchronisation.
    ``theta0`` holds the original values of the tensors listed by ``scaled_idx``. The
    look-ahead loss comes back as a 0-dim tensor on the model's device (no synchronisation
    here). Leaves the parameters at ``theta'``; the caller restores them.
    """
    before = evaluator.params[held[1]].detach().clone() if held is not None else None
    decay = virtual_step_(evaluator.params, grads, gnorm, config)
    grads.clear()
    if held is None:
        lookahead, d_theta = evaluator.grad(batch_tilde)
    else:
        module, i = held
        with evaluator.holding(module, "weight", before):
            lookahead, d_theta = evaluator.grad(batch_tilde)
            # d theta'/d theta = c on the moved path, 1 on the held one; the common factor c is
            # applied below.
            d_theta[i] = d_theta[i] + evaluator.held_grads[0] / decay
    scale_grad = scale_gradients([d_theta[i] for i in scaled_idx], theta0)
    return lookahead, scale_grad * (decay / float(config.eta))


def constraint_scale_gradient(
    evaluator: LossEvaluator,
    batch: Batch,
    grads: Tensors,
    gnorm: torch.Tensor | float,
    theta0: Tensors,
    scaled_idx: Sequence[int],
    config: GradInitConfig,
) -> torch.Tensor:
    """Constraint step: ``d ||g||_p / d alpha`` on ``S``, with ``H v`` from ``config.hvp``.

    ``grads`` is ``g`` (averaged over processes in a multi-process run) and ``gnorm`` its
    ``p``-norm; the list is emptied once used. A finite difference leaves the parameters
    moved; the caller restores them. The forward difference (``config.fd_scheme``)
    reuses ``g`` as the gradient at ``theta``: in a multi-process run that is the average of
    all shards, so each process's difference is not its own shard's product, but the
    average over processes (taken of the scale gradients) is exactly the average of the
    shards' forward differences.
    """
    direction = norm_direction(grads, gnorm, config.norm_order)
    if config.hvp == "exact":
        grads.clear()
        d_theta = hvp_exact(evaluator, batch, direction)
    else:
        base = list(grads) if config.fd_scheme == "forward" else None
        grads.clear()
        d_theta = hvp_finite_difference(evaluator, batch, direction, config.fd_eps, grad_at_theta=base)
    del direction
    return scale_gradients([d_theta[i] for i in scaled_idx], theta0)
