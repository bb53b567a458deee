"""Settings of MetaInit: :class:`MetaInitConfig`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ...config import HVP_MODES, HvpMode, InitConfig, checked_count

MetaInitOptimizer = Literal["sign_sgd", "adam"]
METAINIT_OPTIMIZERS: tuple[str, ...] = ("sign_sgd", "adam")
# The default lr of each optimizer: the MetaInit paper's 0.1 (an absolute step of a norm) and
# the GradInit authors' --gradinit-lr default 1e-3 (a step of a scale), which their MetaInit used.
DEFAULT_LR = {"sign_sgd": 0.1, "adam": 1e-3}


@dataclass
class MetaInitConfig(InitConfig):
    """Settings of :func:`metainit` (defaults: the paper's, where it has one).

    Args:
        optimizer: What learns the norms (see the module docstring):

            * ``"sign_sgd"``: the MetaInit paper's sign-SGD with momentum on the norms of the
              tensors with 2+ dimensions;
            * ``"adam"``: the variant the GradInit authors ran for their paper's MetaInit rows
              (``metainit`` in zhuchen03/gradinit): Adam on each tensor's *scale* (norm over
              initial norm) with the scale gradient clipped to ``[-clip, clip]``, and every
              tensor with a nonzero initial norm scaled, 1-D ones included (biases bounded
              below by 0, the rest by ``min_scale``).
        lr: Learning rate. ``None``: 0.1 for ``"sign_sgd"`` (the paper's; an absolute change
            of a norm per step, for CNNs whose weight norms are about 10 or more: scale it to
            your model's norms, a 32x32 matrix drawn from N(0, 0.02) has norm 0.64, and with
            momentum 0.9 a norm can move by up to ``10 * lr`` per step), 1e-3 for ``"adam"``
            (a change of a scale per step: the default of the GradInit authors' code, whose
            paper does not say which value its MetaInit rows used).
        momentum: Momentum of the sign-SGD (paper: 0.9); Adam uses ``betas``.
        betas, clip: Adam's coefficients and the clip of each scale's gradient (the GradInit
            authors' code: (0.9, 0.999) and 1); ``"adam"`` only.
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
            (see :func:`hf_gradinit.functional.fd_step_size`).
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
        >>> cfg.optimizer, cfg.lr, cfg.momentum, cfg.eps, cfg.hvp
        ('sign_sgd', 0.1, 0.9, 1e-05, 'exact')
        >>> MetaInitConfig(optimizer="adam").lr  # as the GradInit authors ran it
        0.001
    """

    optimizer: MetaInitOptimizer = field(
        default="sign_sgd",
        metadata={
            "help": "MetaInit: sign_sgd (the MetaInit paper: sign-SGD on the norms) or adam (as the GradInit"
            " authors ran it: Adam on the scales of every nonzero tensor, clipped scale gradients)."
        },
    )
    lr: float | None = field(
        default=None,
        metadata={
            "help": "MetaInit: learning rate (default: 0.1 for sign_sgd, an absolute step of a norm; 1e-3 for adam,"
            " a step of a scale)."
        },
    )
    momentum: float = field(default=0.9, metadata={"help": "MetaInit: momentum of sign_sgd."})
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"cli": False})
    clip: float = field(
        default=1.0, metadata={"help": "MetaInit: clip of each scale's gradient (adam; 0: none; GradInit code: 1)."}
    )
    steps: int = field(
        default=100, metadata={"help": "MetaInit: sign-SGD steps (paper: 500; each costs about 13 training steps)."}
    )
    eps: float = field(
        default=1e-5, metadata={"help": "MetaInit: eps of the gradient quotient's denominator (paper: 1e-5)."}
    )
    hvp: HvpMode = field(
        default="exact", metadata={"help": "MetaInit: Hessian-vector products: exact or finite_difference."}
    )
    fd_eps: float | None = field(
        default=None, metadata={"help": "MetaInit: relative step of the finite difference (default: from the dtype)."}
    )
    random_inputs: bool = field(
        default=False, metadata={"help": "MetaInit: random inputs and labels, as the paper, instead of real batches."}
    )
    min_scale: float = field(
        default=0.01, metadata={"help": "MetaInit: lower bound of each norm, as a multiple of its initial norm."}
    )
    max_scale: float | None = field(
        default=None,
        metadata={"help": "MetaInit: upper bound of each norm, as a multiple of its initial norm (default: none)."},
    )
    exclude: tuple[str, ...] = field(
        default_factory=tuple,
        metadata={"help": "MetaInit: regular expressions of parameter names whose norm is not learned."},
    )
    seed: int = field(default=0, metadata={"help": "MetaInit: seed of the run (and of its random inputs)."})
    show_progress: bool = field(default=True, metadata={"cli": False})

    def validate(self) -> None:
        if self.optimizer not in METAINIT_OPTIMIZERS:
            raise ValueError(
                f"MetaInitConfig.optimizer must be one of {list(METAINIT_OPTIMIZERS)}, got {self.optimizer!r}."
            )
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]
        self.checked_number("lr", low=0.0)
        self.checked_number("clip", low=0.0, inclusive=True)
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"MetaInitConfig.betas must be two numbers in [0, 1), got {self.betas!r}.")
        self.betas = (float(betas[0]), float(betas[1]))
        self.checked_number("eps", low=0.0)
        self.checked_number("min_scale", low=0.0, inclusive=True)
        self.checked_number("momentum", low=0.0, inclusive=True, high=1.0)
        self.checked_number("fd_eps", low=0.0, allow_none=True)
        self.steps = checked_count("MetaInitConfig", "steps", self.steps)
        if self.hvp not in HVP_MODES:
            raise ValueError(f"MetaInitConfig.hvp must be one of {list(HVP_MODES)}, got {self.hvp!r}.")
        if self.max_scale is not None and not (math.isfinite(self.max_scale) and self.max_scale >= self.min_scale):
            raise ValueError(
                f"MetaInitConfig.max_scale={self.max_scale!r} must be a finite number >= min_scale={self.min_scale!r}"
                " (or None for no upper bound)."
            )
