"""Which of GradInit's targets a training run's optimizer is, and the config that models it.

Kept apart from the Trainer integration so that command-line validation can use it without
importing transformers' ``Trainer`` (seconds of import time before an argument error).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..errors import GradInitError
from ..methods.gradinit.config import GradInitConfig

if TYPE_CHECKING:
    from transformers import TrainingArguments

# The first step of these optimizers is sign(g) (Adam family, Lion, Adagrad) or eta * g (SGD).
_SIGN_STEP = ("adam", "lion", "adagrad")
# First steps GradInit does not model: factored (Adafactor), low-rank (GaLore, APOLLO),
# fused into backward (LOMO), or scaled by 1/sqrt(1 - alpha) (RMSprop).
_UNMODELLED = ("adafactor", "galore", "apollo", "lomo", "rmsprop")


def target_for_optim(optim: Any) -> str | None:
    """GradInit's target for a ``TrainingArguments.optim`` value, or ``None`` if unmodelled."""
    name = str(getattr(optim, "value", optim)).lower()
    if any(k in name for k in _UNMODELLED):
        return None
    if "sgd" in name:
        return "sgd"
    if any(k in name for k in _SIGN_STEP):
        return "adamw" if ("adamw" in name or "lion" in name) else "adam"
    return None


def config_for_training(
    config: GradInitConfig | None, args: TrainingArguments | None, **overrides: Any
) -> GradInitConfig:
    """``config`` with ``eta`` and ``target`` filled from ``args`` where unset.

    ``overrides`` (for example a hyperparameter trial's ``learning_rate`` / ``optim``) take
    precedence over ``args``.
    """
    config = config if config is not None else GradInitConfig()
    lr = overrides.get("learning_rate", getattr(args, "learning_rate", None))
    optim = overrides.get("optim", getattr(args, "optim", None))
    changes: dict[str, Any] = {}
    if config.eta is None and lr is not None:
        changes["eta"] = float(lr)
    if config.target is None and optim is not None:
        target = target_for_optim(optim)
        if target is None:
            raise GradInitError(
                f"GradInit models the first step of SGD- or Adam-like optimizers; --optim"
                f" {getattr(optim, 'value', optim)} takes"
                " another kind of step. Set the target yourself (GradInitConfig(target='adam'|'sgd'),"
                " or --gradinit_target) if you accept the approximation."
            )
        changes["target"] = target
    return dataclasses.replace(config, **changes) if changes else config
