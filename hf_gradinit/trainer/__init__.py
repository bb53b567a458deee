"""🤗 Trainer integration: the callback, ``make_model_init``, and the command-line arguments.

* :mod:`.callback`: :class:`InitializerCallback` / :class:`GradInitCallback`, run at
  ``on_train_begin`` on batches of the Trainer's own training data;
* :mod:`.model_init`: :func:`make_model_init`, for ``Trainer(model_init=...)`` and
  ``hyperparameter_search``;
* :mod:`.arguments`: :class:`InitArguments` (``--model_init``, ``--gradinit_*``...) and
  :func:`trainer_init_kwargs` for example scripts;
* :mod:`.training_target`: which of GradInit's targets a run's ``--optim`` is.

The names load on first use: the callback and ``make_model_init`` import transformers'
``Trainer`` (seconds), which command-line parsing must not wait for.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr

_LAZY = {
    "GradInitCallback": "callback",
    "attach_trainer": "callback",
    "InitializerCallback": "callback",
    "gradinit_batch_size": "callback",
    "initializer_result": "callback",
    "initializer_timing": "callback",
    "make_model_init": "model_init",
    "InitArguments": "arguments",
    "parse_before_training_args": "arguments",
    "trainer_init_kwargs": "arguments",
    "config_for_training": "training_target",
    "target_for_optim": "training_target",
}

if TYPE_CHECKING:
    from .arguments import InitArguments, parse_before_training_args, trainer_init_kwargs
    from .callback import (
        GradInitCallback,
        InitializerCallback,
        attach_trainer,
        gradinit_batch_size,
        initializer_result,
        initializer_timing,
    )
    from .model_init import make_model_init
    from .training_target import config_for_training, target_for_optim


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "GradInitCallback",
    "InitArguments",
    "InitializerCallback",
    "attach_trainer",
    "config_for_training",
    "gradinit_batch_size",
    "initializer_result",
    "initializer_timing",
    "make_model_init",
    "parse_before_training_args",
    "target_for_optim",
    "trainer_init_kwargs",
]
