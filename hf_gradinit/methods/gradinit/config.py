"""Configuration of a GradInit run."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ...config import FD_SCHEMES, HVP_MODES, FdScheme, HvpMode, InitConfig, checked_count

Target = Literal["sgd", "adam", "adamw"]


TARGETS: tuple[str, ...] = ("sgd", "adam", "adamw")


TiedLookahead = Literal["all", "input_only"]


TIED_LOOKAHEADS: tuple[str, ...] = ("all", "input_only")


# Reference settings of the authors' code, by the optimizer GradInit models. "sgd" is the
# CIFAR recipe (normalised step, eta 0.1, gamma 1 on the 2-norm, 390 iterations, clip 1,
# one second moment); "adam"/"adamw" is the IWSLT'14 Post-LN Transformer recipe (eta 1e-3,
# gamma 1000 on the 1-norm, 780 iterations, scale lr 2.5e-3, betas (0.9, 0.98), no clip,
# separate second moments for the two kinds of step).
_SGD_DEFAULTS: dict[str, Any] = {
    "eta": 0.1,
    "normalize_step": True,
    "gamma": 1.0,
    "iters": 390,
    "lr": 1e-2,
    "betas": (0.9, 0.999),
    "clip": 1.0,
    "separate_second_moment": False,
}


_ADAM_DEFAULTS: dict[str, Any] = {
    "eta": 1e-3,
    "normalize_step": False,
    "gamma": 1000.0,
    "iters": 780,
    "lr": 2.5e-3,
    "betas": (0.9, 0.98),
    "clip": 0.0,
    "separate_second_moment": True,
}


_NUMBER_FIELDS = (
    "eta", "gamma", "lr", "norm_lr", "eps", "clip", "min_scale", "max_scale", "bias_min_scale", "bias_max_scale",
    "norm_min_scale", "norm_max_scale", "weight_decay", "overlap", "fd_eps",
)  # fmt: skip


@dataclass
class GradInitConfig(InitConfig):
    """Every setting of GradInit (Zhu et al., NeurIPS 2021).

    GradInit learns one scale ``alpha_i`` per parameter tensor (``theta_i = alpha_i *
    theta0_i``) so that one step of the optimizer you will train with, at the learning
    rate you will train with, lowers the loss as much as possible::

        minimise  L(S~; theta(alpha) - eta * A[g]) / eta,   g = grad L(S; theta(alpha))
        s.t.      ||g||_p <= gamma,   min_scale <= alpha_i <= max_scale

    Fields left at ``None`` take the reference value of the authors' code *for the chosen
    target* when the run starts (see :meth:`resolve`): the CIFAR recipe for ``"sgd"`` and
    the IWSLT'14 Post-LN Transformer recipe for ``"adam"`` / ``"adamw"``.

    Args:
        target: The optimizer you will train with: ``"sgd"`` (with or without momentum:
            momentum does not change a first step), ``"adam"`` or ``"adamw"``; ``None`` means
            ``"adam"`` (the Trainer integration fills it from ``--optim``). It sets the
            virtual step ``A[g]``: ``g`` (or ``g / ||g||_2`` with ``normalize_step``) for
            SGD, ``sign(g)`` for Adam (its first update, epsilon ignored), and the norm
            of the constraint: ``p = 2`` for SGD, ``p = 1`` for Adam.
        eta: The learning rate you will train with (paper: 0.1 for the CNNs, 1e-3 for
            the Transformer, whose training lr was 5e-4).
        normalize_step: SGD only: use the normalised step ``g / ||g||_2`` so the virtual
            step has length exactly ``eta`` (reference CNN runs: ``True``).
        gamma: Bound on ``||g||_p``; above it the iteration minimises the gradient norm
            (a "constraint step") instead of the objective (paper: 1 for the CNNs with
            the 2-norm, 1000 for the Transformer with the 1-norm).
        iters: Number of GradInit iterations, one batch each (paper: 390 for the CNNs,
            about an epoch; 780 for the Transformer).
        lr: Learning rate of the scale optimizer, ``tau``; a scale moves by about ``tau``
            per iteration (paper: 1e-3 to 1e-1 by CNN, 2.5e-3 for the Transformer).
        norm_lr: Scale learning rate for normalisation-layer weights; ``None`` uses ``lr``.
        betas: Adam betas of the scale optimizer.
        eps: Adam epsilon of the scale optimizer.
        clip: Each scalar's gradient is clipped to ``[-clip, clip]``; ``0`` turns it off.
        separate_second_moment: Also keep separate second moments for objective and
            constraint steps (the Transformer code does; the CNN code shares one). First
            moments are always separate, as in both.
        min_scale, max_scale: Bounds of weight scales (paper: 0.01 and none).
        bias_min_scale, bias_max_scale: Bounds of bias scales (paper: 0 and none).
        norm_min_scale, norm_max_scale: Bounds of normalisation-layer weight scales
            (LayerNorm, BatchNorm, RMSNorm...; the Transformer code caps them at 100).
        weight_decay: Weight decay of the training optimizer, modelled in the virtual
            step: decoupled for ``"adamw"`` and ``"sgd"`` (``theta (1 - eta wd)``), coupled
            inside the sign for ``"adam"`` (``sign(g + wd theta)``). The paper's runs
            ignore it (0).
        overlap: Fraction of samples the two minibatches share. Each batch is split by
            samples into ``S`` (its first part) and ``S~`` (its last part), each of
            ``len / (2 - overlap)`` samples: 0.5 (the paper's) splits a batch into thirds,
            ``S`` = thirds 1-2, ``S~`` = thirds 2-3, as the Transformer code does.
        hvp: How constraint steps get their Hessian-vector product: ``"exact"`` (double
            backward, needs an attention kernel with a double backward: GradInit then
            runs SDPA on its math kernel) or ``"finite_difference"`` (differences of
            gradients, first order only, so any kernel works; see ``fd_scheme``).
        fd_scheme: The finite difference: ``"forward"`` reuses the gradient the iteration
            has already taken at ``theta``, so a constraint step costs one more gradient
            evaluation, like an objective step; ``"central"`` takes two more for a
            truncation error of order ``eps^2`` instead of ``eps``. Both stay close to the
            exact product (the tests bound the gap); the authors' code uses the exact one.
        fd_eps: Relative step of the finite-difference product; ``None`` picks it from the
            precision of the parameters and the scheme (see
            :func:`hf_gradinit.functional.fd_step_size`).
        compile: Run the first-order gradient evaluations through ``torch.compile``. It
            pays when the run is long enough to repay the compilation (tens of seconds) and
            the model is small enough for kernel launches to matter (see
            ``benchmarks/README.md``); exact Hessian-vector products stay eager.
        exclude: Regular expressions of parameter names never to rescale (they still take
            part in the virtual step and the gradient norm).
        tied_lookahead: How the virtual step treats an output projection tied to an input
            embedding (``model.get_output_embeddings()``). ``"all"`` (default): the one shared
            tensor moves wherever it is used, as the real optimizer step moves it. ``"input_only"``:
            what the authors' fairseq code does (its look-ahead replaces the embedding module's
            weight, while the output projection keeps a reference to the unmoved one), so the
            output projection reads ``theta(alpha)`` in the look-ahead loss; the scale gradient
            sums both paths. An ablation, to compare with the reference.
        seed: Seed of torch's generators during the run; the caller's RNG state is
            restored afterwards.
        show_progress: Show a tqdm progress bar.

    Example:
        >>> from hf_gradinit import GradInitConfig
        >>> cfg = GradInitConfig(target="adam", eta=5e-4, iters=100)
        >>> cfg.resolve().gamma
        1000.0
    """

    target: Target | None = field(
        default=None, metadata={"help": "Optimizer GradInit models (default: from --optim): sgd, adam or adamw."}
    )
    eta: float | None = field(
        default=None, metadata={"help": "Learning rate GradInit models (default: --learning_rate)."}
    )
    normalize_step: bool | None = field(
        default=None, metadata={"help": "SGD target only: model the normalised step g/|g| (default: yes)."}
    )
    gamma: float | None = field(
        default=None,
        metadata={"help": "Bound on the gradient norm (default: 1 for SGD's 2-norm, 1000 for Adam's 1-norm)."},
    )
    iters: int | None = field(
        default=None, metadata={"help": "GradInit iterations (default: 390 for SGD, 780 for Adam)."}
    )
    lr: float | None = field(
        default=None, metadata={"help": "Learning rate of the scales (default: 1e-2 SGD, 2.5e-3 Adam)."}
    )
    norm_lr: float | None = field(
        default=None, metadata={"help": "Learning rate of normalisation-layer scales (default: the scales' lr)."}
    )
    betas: tuple[float, float] | None = field(default=None, metadata={"cli": False})
    eps: float = field(default=1e-8, metadata={"help": "Epsilon of the scales' Adam."})
    clip: float | None = field(
        default=None, metadata={"help": "Per-scalar gradient clip of the scales, 0 for none (default: 1 SGD, 0 Adam)."}
    )
    separate_second_moment: bool | None = field(
        default=None,
        metadata={
            "help": ("Separate second moments for objective and constraint steps (default: no for SGD, yes for Adam).")
        },
    )
    min_scale: float = field(default=0.01, metadata={"help": "Lower bound of weight scales."})
    max_scale: float | None = field(default=None, metadata={"help": "Upper bound of weight scales (default: none)."})
    bias_min_scale: float = field(default=0.0, metadata={"help": "Lower bound of bias scales."})
    bias_max_scale: float | None = field(default=None, metadata={"help": "Upper bound of bias scales (default: none)."})
    norm_min_scale: float = field(default=0.01, metadata={"help": "Lower bound of normalisation-layer weight scales."})
    norm_max_scale: float | None = field(
        default=100.0, metadata={"help": "Upper bound of normalisation-layer weight scales."}
    )
    weight_decay: float = field(
        default=0.0, metadata={"help": "Weight decay modelled in the virtual step (the paper: 0)."}
    )
    overlap: float = field(default=0.5, metadata={"help": "Fraction of samples the two minibatches share."})
    hvp: HvpMode = field(
        default="finite_difference",
        metadata={"help": "Hessian-vector products of constraint steps: exact or finite_difference."},
    )
    fd_scheme: FdScheme = field(
        default="forward",
        metadata={
            "help": (
                "Finite difference of --gradinit_hvp finite_difference: forward (one more gradient a"
                " constraint step) or central (two more, smaller truncation error)."
            )
        },
    )
    fd_eps: float | None = field(
        default=None,
        metadata={"help": "Relative step of the finite difference (default: from the dtype and the scheme)."},
    )
    compile: bool = field(
        default=False,
        metadata={"help": "Run GradInit's first-order gradient passes through torch.compile (pays on long GPU runs)."},
    )
    exclude: tuple[str, ...] = field(
        default_factory=tuple,
        metadata={
            "help": (
                "Regular expressions of parameter names GradInit leaves unscaled (they still take part in"
                " the virtual step), e.g. 'decoder.*(v_proj|out_proj).weight'."
            )
        },
    )
    tied_lookahead: TiedLookahead = field(
        default="all",
        metadata={
            "help": (
                "Virtual step of an output projection tied to the input embedding: 'all' moves the shared"
                " tensor everywhere; 'input_only' keeps the output projection unmoved, as the authors'"
                " code."
            )
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the GradInit run."})
    show_progress: bool = field(default=True, metadata={"cli": False})

    cli_extra: ClassVar[dict[str, tuple[Any, Any, str]]] = {
        "beta1": (float | None, None, "Scale-Adam beta1, with --gradinit_beta2 (default: 0.9)."),
        "beta2": (float | None, None, "Scale-Adam beta2, with --gradinit_beta1 (default: 0.999 SGD, 0.98 Adam)."),
    }

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        if (options.get("beta1") is None) != (options.get("beta2") is None):
            raise ValueError("Give both --gradinit_beta1 and --gradinit_beta2, or neither.")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> GradInitConfig:
        options = dict(options)
        beta1, beta2 = options.pop("beta1", None), options.pop("beta2", None)
        return cls(**options, betas=None if beta1 is None else (beta1, beta2))

    def validate(self) -> None:
        # Checks that do not depend on the target run at construction, so a typo fails
        # where it was made; the rest run in resolve(). (exclude and seed: InitConfig.)
        if self.iters is not None:
            self.iters = checked_count("GradInitConfig", "iters", self.iters)
        for name in _NUMBER_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"GradInitConfig.{name} must be a number, got {value!r} ({type(value).__name__}).")
            setattr(self, name, float(value))
        if self.betas is not None:
            self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self._check()

    @property
    def norm_order(self) -> int:
        """Order ``p`` of the gradient norm bounded by ``gamma``: 2 for SGD, 1 for Adam."""
        return 2 if self.target == "sgd" else 1

    def resolve(self) -> GradInitConfig:
        """A copy with every ``None`` replaced by the reference value for the target."""
        defaults = _SGD_DEFAULTS if self.target == "sgd" else _ADAM_DEFAULTS
        values = {name: defaults[name] if getattr(self, name) is None else getattr(self, name) for name in defaults}
        values["target"] = self.target or "adam"
        if values["normalize_step"] and values["target"] != "sgd":
            raise ValueError(
                f"normalize_step=True is a setting of the SGD target, but target={values['target']!r}"
                " (Adam's first step is already sign(g)). Drop normalize_step or use target='sgd'."
            )
        resolved = dataclasses.replace(self, **values)
        if resolved.norm_lr is None:
            resolved.norm_lr = resolved.lr
        resolved._check()
        return resolved

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GradInitConfig:
        if isinstance(values, dict) and "hvp" in values and "fd_scheme" not in values:
            # Saved before fd_scheme existed: those runs took central differences.
            values = {**values, "fd_scheme": "central"}
        return super().from_dict(values)

    def _check(self) -> None:
        def positive(name: str, value: float | None, allow_zero: bool = False) -> None:
            if value is None:
                return
            ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
            if not ok:
                bound = ">= 0" if allow_zero else "> 0"
                raise ValueError(f"GradInitConfig.{name} must be a finite number {bound}, got {value!r}.")

        if self.target is not None and self.target not in TARGETS:
            raise ValueError(
                f"GradInitConfig.target must be one of {list(TARGETS)}, got {self.target!r}"
                " (SGD with momentum is 'sgd': momentum does not change a first step)."
            )
        if self.hvp not in HVP_MODES:
            raise ValueError(f"GradInitConfig.hvp must be one of {list(HVP_MODES)}, got {self.hvp!r}.")
        if self.tied_lookahead not in TIED_LOOKAHEADS:
            raise ValueError(
                f"GradInitConfig.tied_lookahead must be one of {list(TIED_LOOKAHEADS)}, got {self.tied_lookahead!r}."
            )
        if self.fd_scheme not in FD_SCHEMES:
            raise ValueError(f"GradInitConfig.fd_scheme must be one of {list(FD_SCHEMES)}, got {self.fd_scheme!r}.")
        for name in ("eta", "gamma", "lr", "norm_lr", "eps", "fd_eps"):
            positive(name, getattr(self, name))
        for name in ("clip", "weight_decay", "min_scale", "bias_min_scale", "norm_min_scale"):
            positive(name, getattr(self, name), allow_zero=True)
        if self.iters is not None and (not isinstance(self.iters, int) or self.iters < 1):
            raise ValueError(f"GradInitConfig.iters must be an integer >= 1, got {self.iters!r}.")
        if not 0.0 <= self.overlap <= 1.0:
            raise ValueError(
                f"GradInitConfig.overlap must lie in [0, 1] (0: disjoint halves, 0.5: the paper's"
                f" overlapping thirds, 1: the same batch twice), got {self.overlap!r}."
            )
        if self.betas is not None and (len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas)):
            raise ValueError(f"GradInitConfig.betas must be two numbers in [0, 1), got {self.betas!r}.")
        for kind in ("", "bias_", "norm_"):
            low, high = getattr(self, f"{kind}min_scale"), getattr(self, f"{kind}max_scale")
            if high is not None and not (math.isfinite(high) and high > 0 and high >= low):
                raise ValueError(
                    f"GradInitConfig.{kind}max_scale={high!r} must be a finite number >= "
                    f"{kind}min_scale={low!r} (or None for no upper bound)."
                )
        if self.weight_decay > 0 and self.eta is not None and self.eta * self.weight_decay >= 1:
            raise ValueError(
                f"eta * weight_decay = {self.eta * self.weight_decay:g} >= 1 would flip the sign of"
                " every weight in the modelled step; check eta and weight_decay."
            )
