"""``InitArguments``: ``--model_init`` and ``--gradinit_*`` options for Hugging Face example scripts.

Add it to a script's ``HfArgumentParser`` and pass the parsed values to
:func:`trainer_init_kwargs`; the script then needs three changed lines::

    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, Seq2SeqTrainingArguments, InitArguments))
    model_args, data_args, training_args, init_args = parser.parse_args_into_dataclasses()
    ...
    trainer = Seq2SeqTrainer(
        args=training_args, train_dataset=train_dataset, data_collator=data_collator,
        **trainer_init_kwargs(init_args, training_args, model=model),
    )

and ``python run_translation.py ... --model_init gradinit --gradinit_iters 200`` runs GradInit
for the ``--learning_rate`` and ``--optim`` of the run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..batches import Batch
from ..config import FD_SCHEMES, HVP_MODES
from ..errors import GradInitError
from ..methods.gradinit.config import TARGETS, TIED_LOOKAHEADS, GradInitConfig
from ..methods.lsuv.config import LSUVConfig
from ..methods.metainit.config import MetaInitConfig
from ..registry import RegisteredNames, get_initializer
from .training_target import config_for_training

if TYPE_CHECKING:
    from torch import nn
    from transformers import TrainingArguments

# Config field names in error messages, as the flags that set them.
_FLAG_PREFIX = {"GradInitConfig": "--gradinit_", "LSUVConfig": "--lsuv_", "MetaInitConfig": "--metainit_"}

SCALES_FILE_NAME = "init_scales.json"


@dataclass
class InitArguments:
    """How to initialise the model before training. Every name is free in ``TrainingArguments``."""

    model_init: str = field(
        default="default",
        metadata={
            "help": "Initialiser run before training: 'default' keeps the model's own initialisation;"
            " 'gradinit' learns per-tensor scales for one step of --optim at --learning_rate.",
            "choices": RegisteredNames(),
        },
    )
    gradinit_iters: int | None = field(
        default=None, metadata={"help": "GradInit iterations (default: 390 for SGD, 780 for Adam)."}
    )
    gradinit_lr: float | None = field(
        default=None, metadata={"help": "Learning rate of the scales (default: 1e-2 SGD, 2.5e-3 Adam)."}
    )
    gradinit_eta: float | None = field(
        default=None, metadata={"help": "Learning rate GradInit models (default: --learning_rate)."}
    )
    gradinit_target: str | None = field(
        default=None,
        metadata={"help": "Optimizer GradInit models (default: from --optim).", "choices": list(TARGETS)},
    )
    gradinit_gamma: float | None = field(
        default=None,
        metadata={"help": "Bound on the gradient norm (default: 1 for SGD's 2-norm, 1000 for Adam's 1-norm)."},
    )
    gradinit_normalize_step: bool | None = field(
        default=None, metadata={"help": "SGD target only: model the normalised step g/|g| (default: yes)."}
    )
    gradinit_min_scale: float = field(default=0.01, metadata={"help": "Lower bound of weight scales."})
    gradinit_max_scale: float | None = field(default=None, metadata={"help": "Upper bound of weight scales."})
    gradinit_norm_min_scale: float = field(
        default=0.01, metadata={"help": "Lower bound of normalisation-layer weight scales."}
    )
    gradinit_norm_max_scale: float | None = field(
        default=100.0, metadata={"help": "Upper bound of normalisation-layer weight scales."}
    )
    gradinit_clip: float | None = field(
        default=None, metadata={"help": "Per-scalar gradient clip of the scales, 0 for none (default: 1 SGD, 0 Adam)."}
    )
    gradinit_overlap: float = field(default=0.5, metadata={"help": "Fraction of samples the two minibatches share."})
    gradinit_batch_size: int | None = field(
        default=None,
        metadata={"help": "Samples per GradInit batch, per device (default: 1.5x --per_device_train_batch_size)."},
    )
    gradinit_max_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Token-bounded GradInit batches instead of --gradinit_batch_size: sentences grouped by"
            " length, at most this many tokens per device (fairseq's --max-tokens; the paper: 6000)."
        },
    )
    gradinit_hvp: str = field(
        default="finite_difference",
        metadata={"help": "Hessian-vector products of constraint steps.", "choices": list(HVP_MODES)},
    )
    gradinit_fd_scheme: str = field(
        default="forward",
        metadata={
            "help": "Finite difference of --gradinit_hvp finite_difference: forward (one more gradient a"
            " constraint step) or central (two more, smaller truncation error).",
            "choices": list(FD_SCHEMES),
        },
    )
    gradinit_tied_lookahead: str = field(
        default="all",
        metadata={
            "help": "Virtual step of an output projection tied to the input embedding: 'all' moves the shared"
            " tensor everywhere; 'input_only' keeps the output projection unmoved, as the authors' code.",
            "choices": list(TIED_LOOKAHEADS),
        },
    )
    gradinit_compile: bool = field(
        default=False,
        metadata={"help": "Run GradInit's first-order gradient passes through torch.compile (pays on long GPU runs)."},
    )
    gradinit_seed: int = field(default=0, metadata={"help": "Seed of the GradInit run."})
    gradinit_exclude: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Regular expressions of parameter names GradInit leaves unscaled (they still take part in"
            " the virtual step), e.g. 'decoder.*(v_proj|out_proj).weight'."
        },
    )
    gradinit_beta1: float | None = field(
        default=None, metadata={"help": "Scale-Adam beta1, with --gradinit_beta2 (default: 0.9)."}
    )
    gradinit_beta2: float | None = field(
        default=None, metadata={"help": "Scale-Adam beta2, with --gradinit_beta1 (default: 0.999 SGD, 0.98 Adam)."}
    )
    gradinit_bias_min_scale: float = field(default=0.0, metadata={"help": "Lower bound of bias scales."})
    gradinit_weight_decay: float = field(
        default=0.0, metadata={"help": "Weight decay modelled in the virtual step (the paper: 0)."}
    )
    lsuv_tol: float = field(default=0.1, metadata={"help": "LSUV: tolerance on each layer's output std."})
    lsuv_max_tries: int = field(default=10, metadata={"help": "LSUV: rescaling tries per layer."})
    lsuv_orthonormal: bool = field(default=True, metadata={"help": "LSUV: orthonormal pre-initialisation first."})
    metainit_lr: float = field(
        default=0.1, metadata={"help": "MetaInit: step on each tensor's norm (paper: 0.1; scale it to the norms)."}
    )
    metainit_steps: int = field(
        default=100, metadata={"help": "MetaInit: sign-SGD steps (paper: 500; each costs about 13 training steps)."}
    )
    metainit_momentum: float = field(default=0.9, metadata={"help": "MetaInit: momentum."})
    metainit_hvp: str = field(
        default="exact", metadata={"help": "MetaInit: Hessian-vector products.", "choices": list(HVP_MODES)}
    )
    metainit_random_inputs: bool = field(
        default=False, metadata={"help": "MetaInit: random inputs and labels, as the paper, instead of real batches."}
    )
    init_scales_file: str | None = field(
        default=None, metadata={"help": "Re-apply an initialisation saved earlier (JSON) instead of learning one."}
    )
    init_scales_partial: bool = field(
        default=False,
        metadata={"help": "Apply an --init_scales_file that covers only part of the model (the rest unscaled)."},
    )
    save_init_scales: bool = field(
        default=False, metadata={"help": f"Save the learned initialisation to <output_dir>/{SCALES_FILE_NAME}."}
    )

    def __post_init__(self) -> None:
        if self.gradinit_max_tokens is not None and self.gradinit_max_tokens < 1:
            raise ValueError(f"--gradinit_max_tokens must be a positive number, got {self.gradinit_max_tokens}.")
        if (self.gradinit_beta1 is None) != (self.gradinit_beta2 is None):
            raise ValueError("Give both --gradinit_beta1 and --gradinit_beta2, or neither.")
        if self.init_scales_file is not None and not os.path.isfile(self.init_scales_file):
            raise ValueError(f"--init_scales_file {self.init_scales_file}: no such file.")

    def validate(self, training_args: TrainingArguments | None = None) -> None:
        """Check the chosen initialiser's options now, before any data or model work.

        Raises ``ValueError`` naming the flag to change: an out-of-range value
        (``--gradinit_iters 0``, ``--gradinit_overlap 2``...), an optimizer GradInit cannot
        model (``--optim adafactor``), or an ``--init_scales_file`` that does not load.
        """
        if self.model_init not in RegisteredNames():
            raise ValueError(f"--model_init {self.model_init}: choose one of {list(RegisteredNames())}.")
        try:
            config = self.initializer_config()
            if isinstance(config, GradInitConfig):
                config_for_training(config, training_args).resolve()  # resolve() checks eta x weight_decay too
        except (ValueError, TypeError, GradInitError) as err:
            message = str(err)
            for cls, prefix in _FLAG_PREFIX.items():
                message = re.sub(rf"{cls}\.(\w+)", lambda m, p=prefix: p + m.group(1), message)
            raise ValueError(f"--model_init {self.model_init}: {message}") from err
        if self.init_scales_file is not None:
            spec = get_initializer(self.model_init)
            if not spec.can_reapply:
                raise ValueError(f"--init_scales_file: initialiser {self.model_init!r} cannot re-apply a saved result.")
            try:
                spec.load_result(self.init_scales_file)
            except (ValueError, KeyError, OSError) as err:
                raise ValueError(f"--init_scales_file {self.init_scales_file}: {err}") from err

    def gradinit_config(self) -> GradInitConfig:
        """The ``GradInitConfig`` these options describe (eta and target may stay unset: the
        Trainer integration fills them from ``TrainingArguments``)."""
        return GradInitConfig(
            target=self.gradinit_target,  # type: ignore[arg-type]
            eta=self.gradinit_eta,
            normalize_step=self.gradinit_normalize_step,
            gamma=self.gradinit_gamma,
            iters=self.gradinit_iters,
            lr=self.gradinit_lr,
            clip=self.gradinit_clip,
            min_scale=self.gradinit_min_scale,
            max_scale=self.gradinit_max_scale,
            norm_min_scale=self.gradinit_norm_min_scale,
            norm_max_scale=self.gradinit_norm_max_scale,
            overlap=self.gradinit_overlap,
            hvp=self.gradinit_hvp,  # type: ignore[arg-type]
            fd_scheme=self.gradinit_fd_scheme,  # type: ignore[arg-type]
            compile=self.gradinit_compile,
            seed=self.gradinit_seed,
            exclude=tuple(self.gradinit_exclude),
            tied_lookahead=self.gradinit_tied_lookahead,  # type: ignore[arg-type]
            betas=None if self.gradinit_beta1 is None else (self.gradinit_beta1, self.gradinit_beta2),  # type: ignore[arg-type]
            bias_min_scale=self.gradinit_bias_min_scale,
            weight_decay=self.gradinit_weight_decay,
        )

    def initializer_config(self) -> Any:
        spec = get_initializer(self.model_init)
        if spec.config_class is GradInitConfig:
            return self.gradinit_config()
        if spec.config_class is LSUVConfig:
            return LSUVConfig(tol=self.lsuv_tol, max_tries=self.lsuv_max_tries, orthonormal=self.lsuv_orthonormal)
        if spec.config_class is MetaInitConfig:
            return MetaInitConfig(
                lr=self.metainit_lr,
                steps=self.metainit_steps,
                momentum=self.metainit_momentum,
                hvp=self.metainit_hvp,  # type: ignore[arg-type]
                random_inputs=self.metainit_random_inputs,
            )
        return spec.config_class() if spec.config_class is not None else None

    def save_path(self, training_args: TrainingArguments) -> str | None:
        return os.path.join(training_args.output_dir, SCALES_FILE_NAME) if self.save_init_scales else None


def parse_before_training_args(parser: Any, args: list[str]) -> tuple[Any, ...]:
    """``parser.parse_args_into_dataclasses(args)`` without building ``TrainingArguments``.

    Its ``__post_init__`` imports most of transformers (5-10 s on a busy machine), so a script
    that checks its options only after it answers a typo slowly. This returns the same tuple
    with every ``TrainingArguments`` (or subclass) replaced by a ``SimpleNamespace`` of its parsed,
    not yet post-processed values: enough for checks that read plain fields such as
    ``learning_rate`` and ``optim`` (:meth:`InitArguments.validate` accepts it). Unknown options
    and malformed values exit through argparse here, as they would later; the real parse still
    builds the real objects afterwards.

    Example::

        early = parse_before_training_args(parser, sys.argv[1:])
        validate(*early)                                   # bad options fail in about a second
        model_args, training_args, init_args = parser.parse_args_into_dataclasses()
    """
    import dataclasses
    import types

    from transformers import TrainingArguments

    namespace, _ = parser.parse_known_args(args=args)
    built = []
    for dtype in parser.dataclass_types:
        values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(dtype) if f.init}
        built.append(types.SimpleNamespace(**values) if issubclass(dtype, TrainingArguments) else dtype(**values))
    return tuple(built)


def trainer_init_kwargs(
    init_args: InitArguments,
    training_args: TrainingArguments,
    *,
    model: nn.Module | None = None,
    model_builder: Callable[..., nn.Module] | None = None,
    train_dataset: Any = None,
    data_collator: Callable | None = None,
    data: Iterable[Batch] | Callable[[], Iterable[Batch]] | None = None,
    callbacks: list | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``Trainer(...)`` that run the chosen initialiser.

    With ``model`` it returns ``{"model": model, "callbacks": [...]}``: the callback route,
    on the Trainer's own training data. With ``model_builder`` (required under DeepSpeed or
    FSDP) it returns ``{"model_init": ...}``, learning once on ``data`` or on batches of
    ``train_dataset`` + ``data_collator``. ``callbacks`` are your own callbacks, kept.
    """
    from .callback import InitializerCallback, _ShardedBatches, _sharding, gradinit_batch_size
    from .model_init import make_model_init

    init_args.validate(training_args)
    callbacks = list(callbacks or [])
    config = init_args.initializer_config()
    sharded = _sharding(training_args, None) is not None
    if (model is None) == (model_builder is None):
        raise ValueError("Pass exactly one of model= (callback route) or model_builder= (model_init route).")
    if model is not None:
        if sharded and init_args.model_init != "default":
            raise GradInitError(
                "Under DeepSpeed or FSDP the model must be initialised before wrapping: pass"
                " model_builder= (a function returning a fresh model) instead of model=."
            )
        if init_args.model_init != "default":
            callbacks.append(
                InitializerCallback(
                    init_args.model_init,
                    config,
                    batch_size=init_args.gradinit_batch_size,
                    max_tokens=init_args.gradinit_max_tokens,
                    save_path=init_args.save_path(training_args),
                    result_file=init_args.init_scales_file,
                    allow_partial=init_args.init_scales_partial,
                )
            )
        return {"model": model, "callbacks": callbacks}
    if data is None and train_dataset is not None:
        data = _ShardedBatches(
            train_dataset,
            data_collator,
            gradinit_batch_size(training_args, init_args.gradinit_batch_size),
            seed=training_args.seed,
            shard=False,  # model_init runs before wrapping: every process initialises alike
            max_tokens=init_args.gradinit_max_tokens,
        )
    model_init = make_model_init(
        model_builder,
        data,
        config,
        initializer=init_args.model_init,
        training_args=training_args,
        result_file=init_args.init_scales_file,
        save_path=init_args.save_path(training_args),
    )
    return {"model_init": model_init, "callbacks": callbacks}
