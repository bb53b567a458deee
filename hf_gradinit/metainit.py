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
import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .batches import Batch, LossFn, recursively_apply
from .config import HVP_MODES, HvpMode, checked_count, checked_exclude, checked_seed
from .driver import ScaleLearner, run
from .errors import GradInitError
from .initializers import register_initializer
from .model_state import PreparedModel
from .objective import LossEvaluator, _math_sdpa, fd_step_size
from .scales import ParamInfo, apply_scales, compute_dtype

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
Tensors = list[torch.Tensor]


@dataclass
class MetaInitConfig:
    """Settings of :func:`metainit` (defaults: the paper's, where it has one).

    Args:
        lr: Learning rate of the sign-SGD on the norms: an absolute change of a norm per
            step (paper: 0.1, for CNNs whose weight norms are about 10 or more). Scale it to
            your model's norms: a 32x32 matrix drawn from N(0, 0.02) has norm 0.64, and with
            momentum 0.9 a norm can move by up to ``10 * lr`` per step.
        momentum: Momentum of the sign-SGD (paper: 0.9).
        steps: Number of steps, one batch each. Default 100, not the paper's 500 (a deviation,
            for cost): a step costs about 13 training steps (a double backward through ``H g``),
            so 500 steps would take about 15 minutes for a 0.65M-parameter CIFAR VGG on a
            loaded 2-core CPU, and on that VGG the gradient quotient fell from 84 to about 12
            by step 50-100 and stayed there to step 150 (``benchmarks/bench_metainit.py``).
            Set 500 for the paper's setting.
        eps: The ``eps`` of the gradient quotient's denominator (paper: 1e-5).
        hvp: How ``Hg`` is formed, and what it costs. GQ must be differentiated with
            respect to the norms *through* ``Hg``:

            * ``"exact"``: ``Hg`` by double backward with its graph kept, so the step
              differentiates a third-order graph (about 4-5 times the cost of a gradient
              and its memory);
            * ``"finite_difference"``: ``Hg ~ (g(theta + e g) - g(theta - e g)) / 2e`` from
              two more gradients, their graphs kept; the step then needs only second-order
              autograd (a double backward through the three gradients), for models with an
              operation that lacks a third derivative. Its ``e`` is held constant.

            Both need a double backward: a Hugging Face model's SDPA attention runs on its
            math kernel during the run, as in GradInit's ``hvp="exact"``.
        fd_eps: Relative step of the finite difference; ``None`` picks it from the dtype
            (see :func:`hf_gradinit.objective.fd_step_size`).
        random_inputs: Replace each batch by random data of the same structure (the
            paper's setting; see the module docstring), drawn from ``seed``.
        min_scale, max_scale: Bounds of each norm as a multiple of its initial norm
            (``None``: no upper bound).
        exclude: Regular expressions of parameter names whose norm is not learned (they
            still count in the gradient quotient).
        seed: Seed of the random inputs and of torch's generators during the run; the
            caller's RNG state is restored afterwards.
        show_progress: Show a tqdm progress bar.

    Example:
        >>> from hf_gradinit import MetaInitConfig
        >>> cfg = MetaInitConfig(steps=50)
        >>> cfg.lr, cfg.momentum, cfg.eps, cfg.hvp
        (0.1, 0.9, 1e-05, 'exact')
    """

    lr: float = 0.1
    momentum: float = 0.9
    steps: int = 100
    eps: float = 1e-5
    hvp: HvpMode = "exact"
    fd_eps: float | None = None
    random_inputs: bool = False
    min_scale: float = 0.01
    max_scale: float | None = None
    exclude: tuple[str, ...] = field(default_factory=tuple)
    seed: int = 0
    show_progress: bool = True

    def __post_init__(self) -> None:
        self.exclude = checked_exclude("MetaInitConfig", self.exclude)
        self.seed = checked_seed("MetaInitConfig", self.seed)

        def number(name: str, low: float, inclusive: bool) -> None:
            value = getattr(self, name)
            ok = (
                isinstance(value, (int, float))
                and math.isfinite(value)
                and (value >= low if inclusive else value > low)
            )
            if not ok:
                raise ValueError(f"MetaInitConfig.{name} must be a finite number {'>=' if inclusive else '>'} {low}.")

        number("lr", 0.0, False)
        number("eps", 0.0, False)
        number("min_scale", 0.0, True)
        if not (isinstance(self.momentum, (int, float)) and 0.0 <= self.momentum < 1.0):
            raise ValueError(f"MetaInitConfig.momentum must lie in [0, 1), got {self.momentum!r}.")
        self.steps = checked_count("MetaInitConfig", "steps", self.steps)
        if self.hvp not in HVP_MODES:
            raise ValueError(f"MetaInitConfig.hvp must be one of {list(HVP_MODES)}, got {self.hvp!r}.")
        if self.fd_eps is not None:
            number("fd_eps", 0.0, False)
        if self.max_scale is not None and not (math.isfinite(self.max_scale) and self.max_scale >= self.min_scale):
            raise ValueError(
                f"MetaInitConfig.max_scale={self.max_scale!r} must be a finite number >= min_scale={self.min_scale!r}"
                " (or None for no upper bound)."
            )
        for pattern in self.exclude:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(
                    f"MetaInitConfig.exclude has an invalid regular expression {pattern!r}: {err}"
                ) from err

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-able values."""
        out = dataclasses.asdict(self)
        out["exclude"] = list(self.exclude)
        return out


@dataclass
class MetaInitResult:
    """The outcome of :func:`metainit`: one scale (learned norm / initial norm) per tensor.

    MetaInit keeps directions, so the result re-applies as scales:
    ``apply_scales(fresh_model, result)`` (or :meth:`apply`) gives the same weights bit for
    bit on a model built with the same seed.

    Attributes:
        scales: Final norm over initial norm, by parameter name (one name per tied group).
        init_norms: Norm of each of those tensors before MetaInit.
        skipped: Trainable tensors whose norm was not learned, and why.
        history: One record per step: ``step``, ``gq`` (the gradient quotient on that step's
            batch, before its update), ``loss`` and ``seconds``.
        initial_gq, final_gq: GQ on the first batch before and after the run.
        config: The settings the run used.
        timings: ``total_s``, ``steps_s`` and ``step_s`` (mean seconds a step).
    """

    scales: dict[str, float]
    init_norms: dict[str, float]
    skipped: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    initial_gq: float = math.nan
    final_gq: float = math.nan
    config: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.history)

    def apply(self, model: nn.Module) -> nn.Module:
        """Re-apply the learned norms to a freshly built model (see :func:`apply_scales`)."""
        return apply_scales(model, self.scales, init_norms=self.init_norms)

    def metrics(self, prefix: str = "metainit/") -> dict[str, float]:
        """A flat dict of summary figures, for logging to a tracker."""
        values = list(self.scales.values())
        out = {
            "steps": float(self.steps),
            "initial_gq": self.initial_gq,
            "final_gq": self.final_gq,
            "tensors": float(len(values)),
            "scale_mean": sum(values) / len(values) if values else math.nan,
            "scale_min": min(values, default=math.nan),
            "scale_max": max(values, default=math.nan),
            "seconds": float(self.timings.get("total_s", math.nan)),
        }
        return {f"{prefix}{k}": float(v) for k, v in out.items()}

    def summary(self, max_rows: int | None = 40) -> str:
        """A plain-text table of the learned norms (largest changes first), with GQ before/after."""
        rows = sorted(self.scales, key=lambda n: -abs(math.log(max(self.scales[n], 1e-12))))
        shown = rows if max_rows is None else rows[:max_rows]
        width = max([len("tensor")] + [len(n) for n in shown])
        lines = [
            f"MetaInit: {self.steps} steps in {self.timings.get('total_s', math.nan):.1f}s; gradient quotient"
            f" {self.initial_gq:.4g} -> {self.final_gq:.4g}; {len(self.scales)} norms learned,"
            f" {len(self.skipped)} tensors kept",
            f"{'tensor':<{width}}  {'init norm':>10}  {'scale':>8}  {'final norm':>10}",
        ]
        for n in shown:
            a, norm0 = self.scales[n], self.init_norms[n]
            lines.append(f"{n:<{width}}  {norm0:>10.4g}  {a:>8.4f}  {a * norm0:>10.4g}")
        if len(shown) < len(rows):
            lines.append(f"... {len(rows) - len(shown)} more (summary(max_rows=None) lists all)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary(max_rows=10)

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON (floats round-trip exactly)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format_version": FORMAT_VERSION, "initializer": "metainit", **dataclasses.asdict(self)}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, allow_nan=True))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> MetaInitResult:
        """Read a result written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"Cannot read a MetaInit result from {str(path)!r}: {err}") from err
        if data.pop("format_version", None) != FORMAT_VERSION or data.pop("initializer", None) != "metainit":
            raise ValueError(f"{str(path)!r} is not a MetaInit result of format {FORMAT_VERSION}.")
        return cls(**data)


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


class MetaInit(ScaleLearner):
    """MetaInit's hooks for the shared driver (:mod:`hf_gradinit.driver`): one step is one
    sign-SGD update of the norms on one batch."""

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
        # MetaInit learns the norms of matrices and filters only (the paper's choice).
        return "fewer than 2 dimensions" if theta0.dim() < 2 else super().skip_reason(info, theta0, norm)

    def setup(self, prepared: PreparedModel, batch: Batch) -> int:
        cfg = self.config
        self.prepared = prepared
        self.theta0 = [t.detach().to(compute_dtype(t.dtype)) for t in prepared.theta0]
        norms = self.select_scaled(self.infos, prepared)
        self.init_norms = torch.tensor([norms[i] for i in self.scaled_idx], dtype=torch.float64)
        self.norms = self.init_norms.clone()
        self.memory = torch.zeros_like(self.norms)
        self.low = self.init_norms * cfg.min_scale
        self.high = self.init_norms * (math.inf if cfg.max_scale is None else cfg.max_scale)
        return cfg.steps

    @property
    def scales(self) -> list[float]:
        return (self.norms / self.init_norms).tolist()

    def prepare_batch(self, batch: Batch) -> Batch:
        batch = super().prepare_batch(batch)
        return randomize_batch(batch, self.generator) if self.config.random_inputs else batch

    def quotient(self, batch: Batch, differentiate: bool = True) -> tuple[torch.Tensor, float, torch.Tensor | None]:
        """``(GQ, loss, dGQ/dnorm)`` at the current norms on ``batch``."""
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
        # d/dnorm = d/dscale / initial norm: a positive factor, so the same sign, as the paper's
        # projection <dGQ/dtheta, theta / ||theta||>.
        d_norm = torch.stack([d.detach().to(torch.float64).cpu() for d in d_scale]) / self.init_norms
        return gq.detach(), float(loss.detach()), d_norm

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
        gq, loss, d_norm = self.quotient(batch)
        assert d_norm is not None
        gq_value = float(self.comm.mean(gq))
        loss = float(self.comm.mean(torch.tensor(loss, device=gq.device)))
        if step == 0 and not math.isfinite(loss):
            raise GradInitError(
                f"The model's loss is {loss} on the first batch, before MetaInit changed anything. Check the data"
                " (labels in range, padding masked with -100) and the model's initialisation."
            )
        d_norm = self.comm.mean(d_norm.to(gq.device)).cpu()
        if not (math.isfinite(gq_value) and bool(torch.isfinite(d_norm).all())):
            raise GradInitError(
                f"MetaInit hit a non-finite gradient quotient or gradient at step {step} (GQ {gq_value});"
                " the model was restored. Lower lr, raise eps or min_scale."
            )
        self.memory = cfg.momentum * self.memory - cfg.lr * torch.sign(d_norm)
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
    """Learn the norm of every tensor of ``model`` with 2+ dimensions by MetaInit, in place.

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


def _reapply(model: nn.Module, result: MetaInitResult, **options: Any) -> nn.Module:
    return result.apply(model)


register_initializer(
    "metainit",
    config_class=MetaInitConfig,
    load_result=MetaInitResult.load,
    reapply=_reapply,
    description="MetaInit (Dauphin & Schoenholz, 2019): norms learned by sign-SGD on the gradient quotient",
)(metainit)
