"""🤗 Trainer integration: a callback for custom code, a ``model_init`` for ``Trainer(model_init=...)``.

Two routes, one result:

* :class:`GradInitCallback` (or :class:`InitializerCallback` for any registered initialiser)
  runs at ``on_train_begin``, on batches from the Trainer's own training data, after the
  model is wrapped and before the first optimizer step. It rescales in place, so the
  optimizer's parameter references stay valid, and it works under DDP (every process
  learns the same scales). It refuses DeepSpeed and FSDP, which copy or shard parameters.
* :func:`make_model_init` returns a ``model_init`` for ``Trainer(model_init=...)`` and
  ``hyperparameter_search``: it initialises before any wrapping, so it also serves DeepSpeed
  and FSDP, and it learns once per setting and re-applies the result on later calls.

GradInit models the optimizer you train with: when ``eta`` or ``target`` is unset, both
routes read them from ``TrainingArguments`` (``learning_rate``, ``optim``).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .batches import Batch, LossFn
from .config import GradInitConfig
from .distributed import Collective, world_size
from .errors import GradInitError
from .initializers import InitializerSpec, get_initializer
from .model_state import model_device
from .token_batches import dataset_lengths, token_batches
from .training_target import config_for_training, target_for_optim  # noqa: F401  (kept importable from here)

logger = logging.getLogger(__name__)


def _sharding(args: TrainingArguments, model: nn.Module | None, trainer: Trainer | None = None) -> str | None:
    """What partitions or copies the parameters after wrapping, if anything: DeepSpeed or FSDP
    chosen in ``TrainingArguments``, by ``accelerate launch`` (its config sets these
    environment variables), seen by the Trainer, or visible on the wrapped model."""
    if getattr(args, "deepspeed", None) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        return "DeepSpeed"
    if getattr(args, "fsdp", None) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        return "FSDP"
    if trainer is not None and (
        getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False)
    ):
        return "DeepSpeed or FSDP"
    if model is not None:
        from torch.distributed import fsdp

        if type(model).__name__ in ("DeepSpeedEngine", "FullyShardedDataParallel") or (
            hasattr(fsdp, "FSDPModule") and isinstance(model, fsdp.FSDPModule)
        ):
            return type(model).__name__
    return None


def _refuse_sharded(args: TrainingArguments, model: nn.Module | None, trainer: Trainer | None = None) -> None:
    found = _sharding(args, model, trainer)
    if found is not None:
        raise GradInitError(
            f"The initialiser callback cannot run under {found}: DeepSpeed and FSDP keep fp32 master"
            " copies or shard the parameters after wrapping, so rescaling the wrapped model in place would"
            " be lost or partial. Initialise before wrapping instead: Trainer(model_init="
            "make_model_init(build_model, train_batches, config, training_args=args)), or with"
            " InitArguments, trainer_init_kwargs(..., model_builder=build_model)."
        )


def _unwrap(model: nn.Module) -> nn.Module:
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def _calling_trainer() -> Trainer | None:
    """The Trainer whose training loop is calling this callback event, if any.

    Callbacks receive the model, optimizer and dataloaders but not the Trainer, whose
    ``log()`` is what reaches ``log_history`` and the ``report_to`` integrations, and whose
    ``compute_loss`` is the training loss (label smoothing, custom subclasses). The event is
    always dispatched from inside the Trainer's own methods, so it is found on the stack.
    """
    frame = sys._getframe(1)
    for _ in range(12):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back
    return None


def _trainer_loss_fn(trainer: Trainer) -> LossFn:
    def loss_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
        # compute_loss pops the labels, so hand it a copy of the batch.
        return trainer.compute_loss(model, dict(batch))

    return loss_fn


def gradinit_batch_size(args: TrainingArguments | None, batch_size: int | None) -> int:
    """GradInit's batch: 1.5x the training batch by default, so that S and S~ (each 2/3 of a
    batch at the paper's overlap of 0.5) are as large as a training batch, as in the paper."""
    if batch_size is not None:
        return int(batch_size)
    per_device = getattr(args, "per_device_train_batch_size", 8) if args is not None else 8
    return max(2, math.ceil(1.5 * per_device))


class _ShardedBatches:
    """A re-iterable of batches over ``dataset``: a seeded shuffle shared by all processes,
    each taking its own ``rank::world`` share when ``shard`` (as ``DistributedSampler`` does),
    so GradInit reads the training data without touching the Trainer's dataloader or its
    state (accelerate's dataloader registers itself for gradient accumulation and counts
    epochs while iterated)."""

    def __init__(
        self,
        dataset: Any,
        collate_fn: Callable | None,
        batch_size: int,
        seed: int,
        num_workers: int = 0,
        shard: bool = True,
        max_tokens: int | None = None,
    ):
        self.shard = shard
        self.max_tokens = max_tokens
        self._lengths: list[int] | None = None
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.epoch = 0

    def __iter__(self) -> Iterator[Batch]:
        world = world_size() if self.shard else 1
        rank = torch.distributed.get_rank() if world > 1 else 0
        if isinstance(self.dataset, IterableDataset):
            loader = DataLoader(self.dataset, batch_size=self.batch_size, collate_fn=self.collate_fn)
            for i, batch in enumerate(loader):
                if i % world == rank:
                    yield batch
            return
        if self.max_tokens is not None:
            yield from self._token_bounded(world, rank)
            return
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.dataset), generator=g).tolist()
        order = order[: len(order) - len(order) % world][rank::world]
        loader = DataLoader(
            torch.utils.data.Subset(self.dataset, order),
            batch_size=self.batch_size,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            drop_last=len(order) >= self.batch_size,
        )
        yield from loader

    def _token_bounded(self, world: int, rank: int) -> Iterator[Batch]:
        # Every process cuts the same batches (same seed) and takes every world-th one, so
        # each holds at most max_tokens tokens per device, as a token-bounded training batch.
        if self._lengths is None:
            self._lengths = dataset_lengths(self.dataset)
        batches = token_batches(self._lengths, self.max_tokens, seed=self.seed + self.epoch)
        self.epoch += 1
        batches = batches[: len(batches) - len(batches) % world][rank::world]
        loader = DataLoader(
            self.dataset, batch_sampler=batches, collate_fn=self.collate_fn, num_workers=self.num_workers
        )
        yield from loader


class InitializerCallback(TrainerCallback):
    """Runs a registered initialiser (``gradinit``, ``default``, ...) at the start of training.

    Args:
        name: A registered initialiser (see :func:`hf_gradinit.available_initializers`).
        config: Its settings. For GradInit, ``eta`` and ``target`` left unset are read from the
            ``TrainingArguments`` (``learning_rate``, ``optim``), so GradInit models the
            optimizer you actually train with.
        loss_fn: ``loss_fn(model, batch)``; by default the Trainer's own ``compute_loss``
            (which applies label smoothing and any override in a Trainer subclass).
        batch_size: Batch size of the initialiser's batches; default 1.5x the per-device
            training batch (see :func:`gradinit_batch_size`).
        max_tokens: Token-bounded batches instead (fairseq's ``--max-tokens``; the paper's
            GradInit used 6,000): sentences grouped by length, at most this many tokens per
            device, padding included (see :mod:`hf_gradinit.token_batches`).
        save_path: Write the result there (JSON) from the main process.
        result_file: Re-apply a result saved earlier instead of computing one. A GradInit file
            must cover every tensor it would rescale, with matching norms, unless
            ``allow_partial``.
        allow_partial: Apply a ``result_file`` that covers only part of the model.

    It runs once per model: not again when training resumes from a checkpoint (which already
    holds the initialised weights), nor when ``train()`` is called again on the same model.
    """

    def __init__(
        self,
        name: str,
        config: Any = None,
        *,
        loss_fn: LossFn | None = None,
        batch_size: int | None = None,
        max_tokens: int | None = None,
        save_path: str | os.PathLike | None = None,
        result_file: str | os.PathLike | None = None,
        allow_partial: bool = False,
    ):
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive number of tokens, got {max_tokens!r}.")
        self.spec: InitializerSpec = get_initializer(name)
        self.max_tokens = max_tokens
        self.allow_partial = allow_partial
        self.config = config
        self.loss_fn = loss_fn
        self.batch_size = batch_size
        self.save_path = save_path
        self.result_file = result_file
        self.result: Any = None
        # A weak reference, not id(): a new model may reuse a collected one's id.
        self._done_for: weakref.ref[nn.Module] | None = None

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        train_dataloader: DataLoader | None = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise GradInitError("The Trainer passed no model to the initialiser callback.")
        core = _unwrap(model)
        if state.global_step > 0:
            logger.info("Resuming from step %d: the checkpoint holds the initialised weights; %s skipped.",
                        state.global_step, self.spec.name)  # fmt: skip
            return
        if (self._done_for is not None and self._done_for() is core) or self.spec.name == "default":
            return
        trainer = _calling_trainer()
        _refuse_sharded(args, model, trainer)
        config = self._config(args, state)
        if self.result_file is not None:
            if self.spec.load_result is None or self.spec.reapply is None:
                raise GradInitError(f"Initialiser {self.spec.name!r} cannot re-apply a saved result.")
            self.result = self.spec.load_result(str(self.result_file))
            self.spec.reapply(core, self.result, **({"allow_partial": True} if self.allow_partial else {}))
        else:
            data = None
            if self.spec.needs_data:
                if train_dataloader is None:
                    raise GradInitError(f"{self.spec.name} needs training data, and the Trainer has no train_dataset.")
                data = _ShardedBatches(
                    train_dataloader.dataset,
                    train_dataloader.collate_fn,
                    gradinit_batch_size(args, self.batch_size),
                    seed=args.seed,
                    num_workers=args.dataloader_num_workers,
                    max_tokens=self.max_tokens,
                )
            loss_fn = self.loss_fn or (_trainer_loss_fn(trainer) if trainer is not None else None)
            self.result = self.spec.fn(core, data, config, loss_fn=loss_fn, distributed=None)
            if self.save_path is not None and self.result is not None and state.is_world_process_zero:
                self.result.save(self.save_path)
        self._done_for = weakref.ref(core)
        # gloo reduces CPU tensors, NCCL CUDA ones: the model's device suits its process group.
        self._report(trainer, state, model_device(core))

    def _config(self, args: TrainingArguments, state: TrainerState) -> Any:
        if self.spec.config_class is not GradInitConfig:
            return self.config
        config = config_for_training(self.config, args)
        if config.show_progress and (args.disable_tqdm or not state.is_local_process_zero):
            config = dataclasses.replace(config, show_progress=False)
        return config

    def _report(self, trainer: Trainer | None, state: TrainerState, device: torch.device) -> None:
        metrics_fn = getattr(self.result, "metrics", None)
        if metrics_fn is None:
            return
        metrics = dict(metrics_fn(prefix=f"{self.spec.name}/"))
        comm = Collective()
        if comm.active:
            # Losses, norms and scales are already equal on every rank (averaged in the loop);
            # wall times are not: report the slowest rank's, the time the run waited.
            for key in [k for k in metrics if k.endswith("seconds")]:
                metrics[key] = comm.max(metrics[key], device)
        if state.is_world_process_zero and hasattr(self.result, "summary"):
            logger.info("\n%s", self.result.summary(max_rows=15))
        if trainer is not None:
            trainer.log(metrics)
        else:  # driven outside a Trainer: keep the figures where the Trainer would
            state.log_history.append({**metrics, "step": state.global_step})


def initializer_result(trainer: Trainer) -> Any:
    """The result of the initialiser callback that ran in ``trainer``, or ``None``."""
    callback = next((c for c in trainer.callback_handler.callbacks if isinstance(c, InitializerCallback)), None)
    return getattr(callback, "result", None)


def initializer_timing(trainer: Trainer, train_runtime: float) -> dict[str, float]:
    """``init_seconds`` and ``init_fraction_of_train_runtime`` of the initialiser that ran in
    ``trainer`` (empty when none reported a time), for an example's results file."""
    seconds = getattr(initializer_result(trainer), "timings", {}).get("total_s")
    if seconds is None:
        return {}
    return {"init_seconds": seconds, "init_fraction_of_train_runtime": seconds / train_runtime}


class GradInitCallback(InitializerCallback):
    """Runs GradInit at the start of ``Trainer.train()``.

    Example (a script that already builds ``model``, ``training_args``, datasets)::

        from hf_gradinit import GradInitCallback, GradInitConfig

        trainer = Seq2SeqTrainer(
            model=model, args=training_args, train_dataset=train_ds, data_collator=collator,
            callbacks=[GradInitCallback(GradInitConfig(iters=200))],  # eta, target from args
        )
        trainer.train()

    GradInit's summary lands in ``trainer.state.log_history`` and the ``report_to``
    integrations under ``gradinit/...``. See :class:`InitializerCallback` for the arguments.
    """

    def __init__(self, config: GradInitConfig | None = None, **kwargs: Any):
        super().__init__("gradinit", config, **kwargs)


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
            self.results[key] = self.spec.load_result(str(self.result_file))
        if key in self.results and self.spec.reapply is not None:
            self.spec.reapply(model, self.results[key])
            return model
        device = self.device if self.device is not None else getattr(self.training_args, "device", None)
        if device is not None:
            model.to(device)
        data = self.data() if callable(self.data) else self.data
        result = self.spec.fn(model, data, config, loss_fn=self.loss_fn, distributed=False)
        self.computed += 1
        self.results[key] = result
        if self.save_path is not None and result is not None and getattr(self.training_args, "process_index", 0) == 0:
            result.save(self.save_path)
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
