"""``make_model_init``: a ``model_init`` for ``Trainer(model_init=...)`` that builds and initialises a model."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from transformers import TrainingArguments

from ..batches import Batch, LossFn
from ..errors import GradInitError
from ..methods.gradinit.config import GradInitConfig
from ..registry import get_initializer
from .training_target import config_for_training

logger = logging.getLogger(__name__)


def _trial_params(trial: Any) -> dict[str, Any]:
    if trial is None:
        return {}
    if hasattr(trial, "params"):  # optuna
        return dict(trial.params)
    try:
        return dict(trial)
    except (TypeError, ValueError):
        return {}


class _ModelInit:
    """The callable :func:`make_model_init` returns (documented there)."""

    def __init__(self, build, data, name, config, training_args, loss_fn, result_file, save_path, device):
        self.build = build
        self.data = data
        self.spec = get_initializer(name)
        self.config = config
        self.training_args = training_args
        self.loss_fn = loss_fn
        self.result_file = result_file
        self.save_path = save_path
        self.device = device
        self.results: dict[str, Any] = {}
        self.computed = 0  # how many times the initialiser actually ran
        self._build_takes_trial = len(inspect.signature(build).parameters) > 0

    def __call__(self, trial: Any = None) -> nn.Module:
        model = self.build(trial) if self._build_takes_trial else self.build()
        if self.spec.name == "default":
            return model
        resume = getattr(self.training_args, "resume_from_checkpoint", None)
        if resume:
            # The Trainer loads the checkpoint over whatever model_init returns, and the
            # checkpoint already holds the initialised weights: computing them again is waste.
            logger.info("resume_from_checkpoint=%s: %s skipped (the checkpoint holds the initialised weights).",
                        resume, self.spec.name)  # fmt: skip
            return model
        config = self._config(trial)
        key = json.dumps({"init": self.spec.name, "config": _jsonable(config)}, sort_keys=True)
        if key not in self.results and self.result_file is not None:
            self.results[key] = self.spec.load_result(self.result_file)
        if key in self.results and self.spec.can_reapply:
            self.spec.reapply(model, self.results[key])
            return model
        device = self.device if self.device is not None else getattr(self.training_args, "device", None)
        if device is not None:
            model.to(device)
        data = self.data() if callable(self.data) else self.data
        result = self.spec.fn(model, data, config, loss_fn=self.loss_fn, distributed=False)
        self.computed += 1
        self.results[key] = result
        main = getattr(self.training_args, "process_index", 0) == 0
        if self.save_path is not None and result is not None and main:
            result.save(self.save_path)
        headline = getattr(result, "headline", None)
        if main and callable(headline):
            print(f"[hf_gradinit] {headline()}", flush=True)  # as the callback: reaches the console
        return model

    def _config(self, trial: Any) -> Any:
        if self.spec.config_class is not GradInitConfig:
            return self.config
        params = _trial_params(trial)
        overrides = {k: params[k] for k in ("learning_rate", "optim") if k in params}
        config = config_for_training(self.config, self.training_args, **overrides)
        if config.eta is None:
            raise GradInitError(
                "GradInit needs the learning rate you will train with: pass training_args= to"
                " make_model_init, or set GradInitConfig(eta=...)."
            )
        return config


def _jsonable(config: Any) -> Any:
    if config is None:
        return None
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return repr(config)


def make_model_init(
    build: Callable[[], nn.Module] | Callable[[Any], nn.Module],
    data: Iterable[Batch] | Callable[[], Iterable[Batch]] | None,
    config: Any = None,
    *,
    initializer: str = "gradinit",
    training_args: TrainingArguments | None = None,
    loss_fn: LossFn | None = None,
    result_file: str | os.PathLike | None = None,
    save_path: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> Callable[..., nn.Module]:
    """A ``model_init`` for ``Trainer(model_init=...)`` that builds and initialises a model.

    The Trainer calls ``model_init`` twice per run (in ``__init__`` and in ``train()``) and
    once per trial of ``hyperparameter_search``, always after seeding, and hands it no data.
    So the data comes from here, and the initialiser runs once per setting: later calls
    build a fresh model (the same seed gives the same weights) and re-apply the learned
    scales, which reproduces the initialised weights bit for bit. When
    ``training_args.resume_from_checkpoint`` is set (as the 🤗 example scripts do before
    ``trainer.train(resume_from_checkpoint=...)``), the initialiser is skipped: the checkpoint
    the Trainer loads already holds the initialised weights. A script that passes the
    checkpoint to ``train()`` only should set that field too. A trial that changes
    ``learning_rate`` or ``optim`` gets a GradInit of its own, for its own optimizer.

    Args:
        build: Returns a freshly initialised model; may take the trial as its one argument.
        data: Batches (a DataLoader, a list of dicts) or a function returning them; called
            only when the initialiser actually runs.
        config: The initialiser's settings; for GradInit, ``eta`` and ``target`` left unset
            come from ``training_args`` or the trial.
        initializer: A registered name (``"gradinit"``, ``"default"``, ...).
        training_args: The run's ``TrainingArguments`` (learning rate, optimizer, device).
        loss_fn: ``loss_fn(model, batch)``; default: the model output's ``.loss``.
        result_file: Re-apply this saved result instead of computing one.
        save_path: Save the computed result there.
        device: Where to run the initialiser (default ``training_args.device``); the model
            is returned there.

    Returns:
        ``model_init(trial=None) -> nn.Module``. Its ``computed`` attribute counts the
        initialiser's actual runs.

    Example::

        from hf_gradinit import make_model_init

        model_init = make_model_init(
            lambda: MarianMTModel(config),                 # seeded by the Trainer
            DataLoader(train_ds, batch_size=96, shuffle=True, collate_fn=collator),
            training_args=args,                            # lr and optim GradInit models
        )
        trainer = Seq2SeqTrainer(model_init=model_init, args=args, train_dataset=train_ds,
                                 data_collator=collator)
        trainer.train()                                    # GradInit ran once, not twice
    """
    spec = get_initializer(initializer)
    if spec.needs_data and data is None and result_file is None:
        raise GradInitError(
            f"{initializer} needs data: pass batches (or a function returning them), since the Trainer"
            " gives model_init none."
        )
    return _ModelInit(build, data, initializer, config, training_args, loss_fn, result_file, save_path, device)
