"""🤗 Trainer integration: a callback for custom code, a ``model_init`` for ``Trainer(model_init=...)``.

Two routes, one result:

* :class:`GradInitCallback` (or :class:`InitializerCallback` for any registered initialiser)
  runs at ``on_train_begin``, on batches from the Trainer's own training data, after the
  model is wrapped and before the first optimizer step. It rescales in place, so the
  optimizer's parameter references stay valid, and it works under DDP (every process
  learns the same scales) and, for GradInit, on FSDP2-sharded models (``fsdp_version: 2``:
  it works on each process's shards, see :mod:`hf_gradinit.sharding`). It refuses DeepSpeed
  and FSDP1, which copy or flatten the parameters.
* :func:`make_model_init` returns a ``model_init`` for ``Trainer(model_init=...)`` and
  ``hyperparameter_search``: it initialises before any wrapping (the whole model on every
  process), so it also serves DeepSpeed and FSDP1, and it learns once per setting and
  re-applies the result on later calls.

GradInit models the optimizer you train with: when ``eta`` or ``target`` is unset, both
routes read them from ``TrainingArguments`` (``learning_rate``, ``optim``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..batches import Batch, LossFn
from ..distributed import Collective, world_size
from ..errors import GradInitError
from ..methods.gradinit.config import GradInitConfig
from ..model_state import model_device
from ..registry import InitializerSpec, get_initializer
from ..sharding import is_fsdp1, is_fsdp2
from ..token_batches import dataset_lengths, token_batches
from .tensorboard import reports_to_tensorboard, summary_writer, write_scales
from .training_target import config_for_training

logger = logging.getLogger(__name__)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true")


def _requested_sharding(args: TrainingArguments | None) -> str | None:
    """What ``TrainingArguments`` or ``accelerate launch`` (its config sets environment
    variables) ask for: ``"DeepSpeed"``, ``"FSDP1"``, ``"FSDP2"`` or ``None``."""
    if (args is not None and getattr(args, "deepspeed", None)) or _env_flag("ACCELERATE_USE_DEEPSPEED"):
        return "DeepSpeed"
    if (args is not None and getattr(args, "fsdp", None)) or _env_flag("ACCELERATE_USE_FSDP"):
        fsdp_config = (getattr(args, "fsdp_config", None) or {}) if args is not None else {}
        version = fsdp_config.get("version", fsdp_config.get("fsdp_version")) or os.environ.get("FSDP_VERSION", "1")
        return "FSDP2" if str(version) == "2" else "FSDP1"
    return None


def _actual_sharding(model: nn.Module, trainer: Trainer | None = None) -> str | None:
    """What the model the Trainer hands over really is: a request for FSDP can fall back to DDP
    (accelerate does so on a machine without GPUs), so the model, not the arguments, decides."""
    if is_fsdp2(model):
        return "FSDP2"
    if type(model).__name__ == "DeepSpeedEngine" or getattr(trainer, "is_deepspeed_enabled", False):
        return "DeepSpeed"
    if is_fsdp1(model) or getattr(trainer, "is_fsdp_enabled", False):
        return "FSDP1"
    return None


def _refusal(found: str, name: str) -> GradInitError:
    if found == "FSDP2":
        return GradInitError(
            f"Initialiser {name!r} cannot run on an FSDP2-sharded model (only GradInit works on local shards)."
            " Initialise before sharding: Trainer(model_init=make_model_init(build_model, train_batches, ...)),"
            " or trainer_init_kwargs(..., model_builder=build_model)."
        )
    why = (
        "DeepSpeed partitions the parameters (ZeRO-3) and keeps fp32 master copies in its optimizer"
        if found == "DeepSpeed"
        else "FSDP1 flattens the parameters into one sharded buffer, so no tensor has a scale of its own"
    )
    return GradInitError(
        f"The initialiser callback cannot run under {found}: {why}, so rescaling the wrapped model in place"
        " would be lost or partial. Shard with FSDP2 instead (fsdp_version: 2, where GradInit runs on the"
        " shards), or initialise before wrapping: Trainer(model_init=make_model_init(build_model,"
        " train_batches, config, training_args=args)), or trainer_init_kwargs(..., model_builder=build_model)."
    )


def _check_sharding(args: TrainingArguments, model: nn.Module, spec: InitializerSpec, trainer: Trainer | None) -> None:
    found = _actual_sharding(model, trainer)
    requested = _requested_sharding(args)
    if found is None and requested is not None:
        if requested != "FSDP2":
            # The wrapped model is not visible (yet) but DeepSpeed or FSDP1 will own the parameters.
            raise _refusal(requested, spec.name)
        logger.warning(
            "FSDP2 was requested, but the model the Trainer passed is not sharded (accelerate falls back to DDP"
            " on a machine without GPUs): %s runs as under DDP, every process learning the same result.",
            spec.name,
        )
        return
    if found is not None and not (found == "FSDP2" and spec.supports_sharding):
        raise _refusal(found, spec.name)


def _unwrap(model: nn.Module) -> nn.Module:
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def _args_loss_fn(args: TrainingArguments) -> LossFn | None:
    """The loss ``Trainer.compute_loss`` computes by default, rebuilt from ``args``: the model's
    own loss, or with ``label_smoothing_factor`` the Trainer's ``LabelSmoother`` on its logits
    (labels shifted for causal LMs, as the Trainer does). ``None`` means the model's own loss."""
    epsilon = float(getattr(args, "label_smoothing_factor", 0.0) or 0.0)
    if epsilon == 0.0:
        return None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    from transformers.trainer_pt_utils import LabelSmoother

    smoother = LabelSmoother(epsilon=epsilon)

    def loss_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
        inputs = dict(batch)
        labels = inputs.pop("labels", None)
        if labels is None:
            return model(**inputs)["loss"]
        outputs = model(**inputs)
        causal = model._get_name() in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
        return smoother(outputs, labels, shift_labels=causal)

    return loss_fn


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
        loss_fn: ``loss_fn(model, batch)``. By default: with ``trainer`` (or after
            :meth:`attach`), that Trainer's own ``compute_loss`` (a subclass's override and
            ``compute_loss_func`` included); without one, the loss the Trainer computes by
            default, rebuilt from the ``TrainingArguments`` (the model's loss, label-smoothed by
            ``label_smoothing_factor``).
        trainer: The Trainer this callback runs in, for its ``compute_loss`` and for ``log()``,
            which reaches the ``report_to`` integrations; without it the figures go to
            ``state.log_history`` (``trainer_state.json``) and the log. Callbacks are not handed
            their Trainer, so give it here or with :meth:`attach` once the Trainer exists.
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
        trainer: Trainer | None = None,
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
        self.trainer = trainer
        # A weak reference, not id(): a new model may reuse a collected one's id.
        self._done_for: weakref.ref[nn.Module] | None = None

    def attach(self, trainer: Trainer) -> Trainer:
        """Bind ``trainer`` (its ``compute_loss`` and ``log()``), adding this callback to it if it
        is not there yet; returns the trainer. ``attach_trainer`` does it for every initialiser
        callback a Trainer holds."""
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return trainer

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
            if getattr(self._config(args, state), "keep_layernorm", True) is False:
                # The checkpoint was trained without LayerNorm; the rebuilt model has them again.
                from ..methods.schemes import remove_layernorms

                remove_layernorms(core)
            return
        if (self._done_for is not None and self._done_for() is core) or self.spec.name == "default":
            return
        trainer = self.trainer
        _check_sharding(args, model, self.spec, trainer)
        config = self._config(args, state)
        if getattr(config, "keep_layernorm", True) is False and (model is not core or world_size() > 1):
            # DDP registered the parameters when it wrapped the model: removing modules now
            # would leave it waiting for gradients that never come.
            raise GradInitError(
                f"{self.spec.name} removes the LayerNorm modules, which cannot happen inside a wrapped"
                f" ({type(model).__name__}) model. Initialise before wrapping: Trainer(model_init="
                f"make_model_init(build_model, None, config, initializer={self.spec.name!r})), or keep them"
                f" (--{self.spec.name}_keep_layernorm true)."
            )
        if self.result_file is not None:
            if not self.spec.can_reapply:
                raise GradInitError(f"Initialiser {self.spec.name!r} cannot re-apply a saved result.")
            self.result = self.spec.load_result(self.result_file)
            self.spec.reapply(core, self.result, allow_partial=self.allow_partial)
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
            loss_fn = self.loss_fn or (_trainer_loss_fn(trainer) if trainer is not None else _args_loss_fn(args))
            self.result = self.spec.fn(core, data, config, loss_fn=loss_fn, distributed=None)
            if self.save_path is not None and self.result is not None and state.is_world_process_zero:
                self.result.save(self.save_path)
        self._done_for = weakref.ref(core)
        # gloo reduces CPU tensors, NCCL CUDA ones: the model's device suits its process group.
        self._report(trainer, args, state, model_device(core))

    def _config(self, args: TrainingArguments, state: TrainerState) -> Any:
        if self.spec.config_class is not GradInitConfig:
            config = self.config
            if config is None and self.spec.config_class is not None:
                config = self.spec.config_class()  # what the method itself would default to
            from ..methods.schemes import TFixupConfig

            if isinstance(config, TFixupConfig) and config.seed is None:
                # T-Fixup draws from the global RNG: the run's seed, so every process draws alike.
                config = dataclasses.replace(config, seed=args.seed)
        else:
            config = config_for_training(self.config, args)
        # Every method's bar follows the Trainer's: off with --disable_tqdm and on all but one process.
        if getattr(config, "show_progress", False) and (args.disable_tqdm or not state.is_local_process_zero):
            config = dataclasses.replace(config, show_progress=False)
        return config

    def _report(
        self, trainer: Trainer | None, args: TrainingArguments, state: TrainerState, device: torch.device
    ) -> None:
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
        if state.is_world_process_zero:
            # print, not log: upstream scripts leave this library's logger at WARNING, and this
            # is the one line that says what the initialiser did (the table is the engine's
            # INFO log; everything is in trainer_state.json / all_results.json).
            headline = getattr(self.result, "headline", None)
            if callable(headline):
                print(f"[hf_gradinit] {headline()}", flush=True)
            if reports_to_tensorboard(args) and getattr(self.result, "scales", None):
                writer, own = summary_writer(args, trainer)
                write_scales(writer, self.result.scales, self.spec.name, step=state.global_step)
                if own:
                    writer.close()
        if trainer is not None:
            trainer.log(metrics)
        else:  # driven outside a Trainer: keep the figures where the Trainer would
            state.log_history.append({**metrics, "step": state.global_step})


def attach_trainer(trainer: Trainer) -> Trainer:
    """Bind ``trainer`` to every initialiser callback it holds (see
    :meth:`InitializerCallback.attach`): for scripts that build their callbacks with
    :func:`~hf_gradinit.trainer_init_kwargs` before the Trainer exists.

    Example::

        trainer = attach_trainer(Seq2SeqTrainer(args=args, **trainer_init_kwargs(init_args, args, model=model)))
    """
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, InitializerCallback):
            callback.trainer = trainer
    return trainer


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
