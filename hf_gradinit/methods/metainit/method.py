"""MetaInit (Dauphin & Schoenholz, NeurIPS 2019) for any model.

MetaInit keeps the direction of every parameter tensor with two or more dimensions and
learns its norm so that the *gradient quotient* is small::

    GQ(theta) = (1/N) * sum_k | (g_k - (Hg)_k) / (g_k + eps sgn(g_k)) - 1 |,

where ``g`` is the gradient of the loss over *all* trainable tensors, ``Hg = grad(1/2 ||g||^2)``
is the Hessian times the gradient, ``N`` the number of their entries and ``sgn(0) = 1``.
``g - Hg`` is, to first order, the gradient after a plain gradient step of length 1, so GQ
measures how much one step changes the gradient, relative to the gradient: near 0 where the
loss surface is locally close to linear along the gradient, large where curvature dominates.

The norms are learned by sign-SGD with momentum, as in the authors' algorithm: with
``d_j = sign(dGQ/dnorm_j)``, ``m_j <- momentum * m_j - lr * d_j`` and ``norm_j <- norm_j + m_j``
(``lr`` 0.1, momentum 0.9, 500 steps, ``eps`` 1e-5). The step is on the norm itself, so
``lr`` is an absolute change of a tensor's norm per step, whatever its size.

``optimizer="adam"`` runs MetaInit as the GradInit paper's authors did for their comparison
(``metainit`` in ``gradinit_utils.py`` of zhuchen03/gradinit, which produced the MetaInit rows
of that paper's CIFAR table): the same gradient quotient, minimised by GradInit's scale
optimizer (Adam on ``alpha_j = norm_j / initial norm_j``, each ``dGQ/dalpha_j`` clipped to
``[-clip, clip]``, default lr 1e-3), over every tensor with a nonzero initial norm (biases
bounded below by 0, the rest by ``min_scale``), on real training batches; their loop takes
one pass over the training set (391 batches of 128 on CIFAR-10). Which lr their rows used is
not stated; 1e-3 is their code's default, and no launch script of theirs passes another. What
still differs from their loop: the quotient here is over every trainable tensor, theirs over the
tensors of ``Conv2d``, ``Linear``, ``BatchNorm2d`` and their scalar ``Scale``/``Bias`` modules
(all the tensors of their CIFAR networks); the training loader here drops its last partial
batch, so 391 steps are 391 full batches where theirs end on one of 80; and BatchNorm runs on
batch statistics, as in their first release (19eb953), whereas their later ``metainit`` calls
``set_bn_modes`` before ``net.eval()``, which on torch >= 1.6 leaves BatchNorm on its initial
running statistics (an affine identity) during MetaInit.

Differences from the paper, and why:

* Batches: the paper feeds random inputs and labels each step; here real batches are the
  default, since a Hugging Face model's inputs (token ids, masks) have structure random
  floats do not. ``random_inputs=True`` restores the paper's choice with the batch's
  structure: float tensors become Gaussian noise, integer tensors random integers in the
  batch's own range (negative entries, e.g. the ``-100`` of ignored labels, are kept), and
  masks and position ids are kept.
* Bounds: the reference lets a norm cross 0 (which flips the tensor's sign). Here a norm
  stays in ``[min_scale, max_scale]`` times its initial norm (default ``[0.01, inf)``), as
  GradInit bounds its scales.
* Several processes: each process forms ``dGQ/dnorm`` on its own batch and the gradients
  are averaged before the sign, so all processes take the same steps (the gradient of the
  mean of the per-process GQs, not the GQ of the union of the batches).
* The GQ is evaluated in the form ``|(Hg + eps sgn(g)) / (g + eps sgn(g))|``, which is the same
  quantity without the cancellation of the trailing ``- 1``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ...batches import Batch, LossFn
from ...driver import ScaleLearner, run
from ...errors import GradInitError
from ...functional import LossEvaluator, _math_sdpa, fd_step_size
from ...model_state import PreparedModel
from ...scales import ParamInfo, compute_dtype
from ..gradinit.scale_optimizer import ScaleAdam
from .config import MetaInitConfig
from .quotient import _ComposedNorms, gradient_quotient, randomize_batch
from .result import MetaInitResult

logger = logging.getLogger(__name__)


Tensors = list[torch.Tensor]


class MetaInit(ScaleLearner):
    """MetaInit's hooks for the shared driver (:mod:`hf_gradinit.driver`): one step is one
    update of the norms on one batch (sign-SGD, or Adam on their scales)."""

    display_name = "MetaInit"
    function_name = "metainit"
    config_class = MetaInitConfig
    step_noun = "step"
    # "exact" whatever config.hvp: both modes differentiate through a gradient.
    prepared_hvp = "exact"

    def parameters(self) -> list[ParamInfo]:
        self.infos = infos = super().parameters()
        self.evaluator = LossEvaluator(self.model, [i.name for i in infos], [i.param for i in infos], self.loss_fn)
        self.history: list[dict[str, Any]] = []
        self.generator = torch.Generator().manual_seed(self.config.seed)
        return infos

    def hint(self, err: Exception, step: int) -> str:
        message = str(err)
        if "derivative for" in message and "not implemented" in message:
            if self.config.hvp == "exact":
                return (
                    " An operation of the model lacks a higher derivative; hvp='finite_difference' needs one order"
                    " less (a double backward)."
                )
            return " MetaInit needs a double backward through every operation of the model, which this one lacks."
        if isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in message:
            return (
                " Use smaller batches, or hvp='finite_difference' (a second-order graph instead of a third-order one)."
            )
        return super().hint(err, step)

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        return {"GQ": f"{record['gq']:.4g}", "loss": f"{record['loss']:.4g}", "s/step": f"{record['seconds']:.2f}"}

    def skip_reason(self, info: ParamInfo, theta0: torch.Tensor, norm: float) -> str | None:
        # MetaInit learns the norms of matrices and filters only (the paper's choice); the
        # GradInit authors' variant scales every tensor.
        if theta0.dim() < 2 and self.config.optimizer == "sign_sgd":
            return "fewer than 2 dimensions"
        return super().skip_reason(info, theta0, norm)

    def setup(self, prepared: PreparedModel, batch: Batch) -> int:
        cfg = self.config
        self.prepared = prepared
        self.theta0 = [t.detach().to(compute_dtype(t.dtype)) for t in prepared.theta0]
        norms = self.select_scaled(self.infos, prepared)
        self.init_norms = torch.tensor([norms[i] for i in self.scaled_idx], dtype=torch.float64)
        self.norms = self.init_norms.clone()
        self.memory = torch.zeros_like(self.norms)
        high = math.inf if cfg.max_scale is None else cfg.max_scale
        self.low = self.init_norms * cfg.min_scale
        self.high = self.init_norms * high
        if cfg.optimizer == "adam":
            kinds = [self.infos[i].kind for i in self.scaled_idx]
            self.adam = ScaleAdam(
                lr=torch.full((len(kinds),), float(cfg.lr), dtype=torch.float64),
                betas=cfg.betas,
                eps=1e-8,
                clip=cfg.clip,
                low=torch.tensor([0.0 if k == "bias" else cfg.min_scale for k in kinds], dtype=torch.float64),
                high=torch.full((len(kinds),), high),
                separate_second_moment=False,
            )
            self.zeroed = torch.zeros(len(kinds), dtype=torch.bool)
        return cfg.steps

    @property
    def scales(self) -> list[float]:
        return (self.norms / self.init_norms).tolist()

    def prepare_batch(self, batch: Batch) -> Batch:
        batch = super().prepare_batch(batch)
        return randomize_batch(batch, self.generator) if self.config.random_inputs else batch

    def quotient(self, batch: Batch, differentiate: bool = True) -> tuple[torch.Tensor, float, torch.Tensor | None]:
        """``(GQ, loss, dGQ/dscale)`` at the current norms on ``batch`` (scale: norm over initial norm)."""
        cfg = self.config
        device = self.theta0[0].device
        position = {i: j for j, i in enumerate(self.scaled_idx)}
        scales = [
            torch.tensor(a, dtype=self.theta0[i].dtype, device=device, requires_grad=differentiate)
            for a, i in zip(self.scales, self.scaled_idx, strict=True)
        ]
        theta: Tensors = []
        for i, t in enumerate(self.theta0):
            if i in position and differentiate:
                theta.append(scales[position[i]] * t)
            else:
                value = scales[position[i]].detach() * t if i in position else t
                theta.append(value.detach().requires_grad_(True))
        exact = cfg.hvp == "exact"
        with _math_sdpa(), _ComposedNorms() if exact else contextlib.nullcontext():
            loss = self.evaluator.loss(batch, theta)
            grads = list(torch.autograd.grad(loss, theta, create_graph=True, materialize_grads=True))
            hvps = self._hvp(batch, theta, grads)
            gq = gradient_quotient(grads, hvps, cfg.eps)
            if not differentiate:
                return gq.detach(), float(loss.detach()), None
            d_scale = torch.autograd.grad(gq, scales, materialize_grads=True)
        return gq.detach(), float(loss.detach()), torch.stack([d.detach().to(torch.float64).cpu() for d in d_scale])

    def _hvp(self, batch: Batch, theta: Tensors, grads: Tensors) -> Tensors:
        if self.config.hvp == "exact":
            half_sq = sum((g * g).sum() for g in grads) / 2
            return list(torch.autograd.grad(half_sq, theta, create_graph=True, materialize_grads=True))
        with torch.no_grad():
            eps = fd_step_size([t.detach() for t in theta], [g.detach() for g in grads], self.config.fd_eps)
        if eps == 0.0:
            return [torch.zeros_like(g) for g in grads]
        sides = []
        for sign in (1.0, -1.0):
            # The perturbation keeps its graph through g: d(Hg)/dtheta includes H * dg/dtheta = H^2.
            shifted = [t + (sign * eps) * g for t, g in zip(theta, grads, strict=True)]
            loss = self.evaluator.loss(batch, shifted)
            sides.append(torch.autograd.grad(loss, shifted, create_graph=True, materialize_grads=True))
        return [(p - m) / (2.0 * eps) for p, m in zip(*sides, strict=True)]

    def step(self, step: int, batch: Batch) -> dict[str, Any]:
        cfg = self.config
        started = time.perf_counter()
        gq, loss, d_scale = self.quotient(batch)
        assert d_scale is not None
        gq_value = float(self.comm.mean(gq))
        loss = float(self.comm.mean(torch.tensor(loss, device=gq.device)))
        if step == 0 and not math.isfinite(loss):
            raise GradInitError(
                f"The model's loss is {loss} on the first batch, before MetaInit changed anything. Check the data"
                " (labels in range, padding masked with -100) and the model's initialisation."
            )
        d_scale = self.comm.mean(d_scale.to(gq.device)).cpu()
        if not (math.isfinite(gq_value) and bool(torch.isfinite(d_scale).all())):
            raise GradInitError(
                f"MetaInit hit a non-finite gradient quotient or gradient at step {step} (GQ {gq_value});"
                " the model was restored. Lower lr, raise eps or min_scale."
            )
        if cfg.optimizer == "adam":
            alpha = self.adam.step(d_scale, constraint=False)
            # The authors' loop skips a tensor whose norm is 0, so a bias scale that reached its
            # bound 0 stays there.
            alpha[self.zeroed] = 0.0
            self.zeroed |= alpha == 0
            self.norms = alpha * self.init_norms
        else:
            # dGQ/dnorm = dGQ/dscale / initial norm, a positive factor: the sign is that of the
            # paper's projection <dGQ/dtheta, theta / ||theta||>.
            self.memory = cfg.momentum * self.memory - cfg.lr * torch.sign(d_scale)
            self.norms = torch.minimum(torch.maximum(self.norms + self.memory, self.low), self.high)
        record = {"step": step, "gq": gq_value, "loss": loss, "seconds": time.perf_counter() - started}
        self.history.append(record)
        return record

    def final_values(self, first_batch: Batch) -> list[torch.Tensor | None]:
        self.final_gq = float(self.comm.mean(self.quotient(first_batch, differentiate=False)[0]))
        if not math.isfinite(self.final_gq):
            raise GradInitError(f"The gradient quotient after MetaInit is {self.final_gq}; the model was restored.")
        return self.scaled_values(self.prepared, len(self.infos))

    def current_scales(self) -> list[float]:
        return self.scales

    def result(self, timings: dict[str, float]) -> MetaInitResult:
        steps_s = sum(h["seconds"] for h in self.history)
        return MetaInitResult(
            scales={self.infos[i].name: a for i, a in zip(self.scaled_idx, self.scales, strict=True)},
            init_norms={self.infos[i].name: float(n) for i, n in zip(self.scaled_idx, self.init_norms, strict=True)},
            skipped=self.skipped,
            history=self.history,
            kinds={self.infos[i].name: self.infos[i].kind for i in self.scaled_idx},
            initial_gq=self.history[0]["gq"],
            final_gq=self.final_gq,
            config=self.config.to_dict(),
            timings={
                "total_s": timings["total_s"],
                "steps_s": steps_s,
                "step_s": steps_s / len(self.history) if self.history else math.nan,
            },
        )


def metainit(
    model: nn.Module,
    data: Iterable[Batch],
    config: MetaInitConfig | None = None,
    *,
    loss_fn: LossFn | None = None,
    distributed: bool | None = None,
) -> MetaInitResult:
    """Learn the norm of every tensor of ``model`` with 2+ dimensions by MetaInit, in place
    (every tensor with a nonzero norm with ``optimizer="adam"``).

    See the module docstring for the method and its differences from the paper. Each step
    takes one batch (re-iterable data is cycled). During the run the model is in eval mode
    (no dropout) with BatchNorm on batch statistics, in fp32, under ``config.seed``;
    afterwards its modes, dtypes, buffers, attention setting and the caller's RNG state are
    as before. If anything fails the parameters are restored bit for bit and a
    :class:`~hf_gradinit.GradInitError` says why.

    Args:
        model: Any ``nn.Module`` whose loss can be differentiated twice (three times with
            ``hvp="exact"``).
        data: Batches, as for :func:`hf_gradinit.gradinit`.
        config: The settings; ``None`` uses :class:`MetaInitConfig`'s defaults.
        loss_fn: ``loss_fn(model, batch) -> scalar``; default: the model output's ``.loss``.
        distributed: Average the norm gradients over processes (see the module docstring);
            ``None`` does so whenever torch.distributed is initialised with several processes.

    Returns:
        A :class:`MetaInitResult`; re-apply it to a fresh model with ``apply_scales``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from hf_gradinit import MetaInitConfig, metainit
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> batches = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
        >>> loss_fn = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])
        >>> result = metainit(model, batches, MetaInitConfig(steps=5, show_progress=False), loss_fn=loss_fn)
        >>> sorted(result.scales), result.steps
        (['0.weight', '2.weight'], 5)
    """
    return run(MetaInit, model, data, config, loss_fn=loss_fn, distributed=distributed)
