"""The loop every data-driven initialiser shares: :class:`DataDrivenInitializer` and :func:`run`.

GradInit, LSUV and MetaInit differ in what one step does; everything around the step is the
same and lives here, once (as PEFT's ``BaseTuner`` owns the injection loop and leaves each
tuner its hooks):

* the input checks (config type, ``inference_mode``, an ``nn.Module`` with something to change,
  parameters that do not share storage), before any work;
* the caller's RNG, kept around the whole run (data loading included) while torch's
  generators run under the method's seed;
* the batches: a :class:`~hf_gradinit.batches.BatchStream` over ``data`` (re-iterables cycled),
  moved to the model's device and widened from half precision, since the model runs in fp32;
* :class:`~hf_gradinit.model_state.PreparedModel`: the model in the run's state inside, exactly
  as it was outside, and its parameters restored bit for bit unless the run commits;
* agreement across processes: every rank sees the same "no batch" / "ran out" decision, and a
  failure on one rank reaches the others within seconds
  (:meth:`~hf_gradinit.distributed.Collective.failures_shared`);
* a tqdm bar, timings, the summary in the log;
* the error path: whatever fails after the model was touched comes back as a
  :class:`~hf_gradinit.GradInitError` that says where it failed, that the model was restored,
  and (from the method's :meth:`~DataDrivenInitializer.hint`) what to change.

A method subclasses :class:`DataDrivenInitializer` and supplies its set-up, one step, the final
values and the result. A minimal one, which scales every weight to unit norm on the first batch
(``tests/test_guarantees.py`` runs it)::

    class UnitNorm(DataDrivenInitializer):
        display_name = "UnitNorm"
        config_class = UnitNormConfig

        def parameters(self):
            return trainable_parameters(self.model)

        def setup(self, prepared, batch):
            self.prepared = prepared
            return 1  # one step

        def step(self, step, batch):
            return {"step": step}

        def final_values(self, first_batch):
            return [t / t.norm() if t.any() else None for t in self.prepared.theta0]

        def result(self, timings):
            return SimpleResult(timings)  # anything with summary(max_rows=...)

    def unit_norm(model, data, config=None, *, loss_fn=None, distributed=None):
        return run(UnitNorm, model, data, config, loss_fn=loss_fn, distributed=distributed)
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from .batches import Batch, BatchStream, LossFn, promote_half, to_device
from .distributed import Collective, world_size
from .errors import GradInitError
from .model_state import PreparedModel, model_device, seeded_rng
from .scales import ParamInfo, excluded, refuse_shared_storage, scaled, trainable_parameters
from .sharding import Shards, check_shardable

logger = logging.getLogger(__name__)


class DataDrivenInitializer:
    """One run of a data-driven initialiser; :func:`run` drives it.

    Class attributes a method sets:
        display_name: The method's name in messages and on the progress bar (``"GradInit"``).
        function_name: The public function, for messages about its arguments (``"gradinit"``).
        config_class: The settings' dataclass; ``None`` is replaced by its defaults.
        step_noun: What one step is called in messages (``"iteration"``, ``"step"``, ``"layer"``).
        one_batch: Every step works on the first batch (LSUV) instead of a new batch per step.
        prepared_hvp: What :class:`PreparedModel` prepares attention for: ``"exact"`` when the
            method differentiates through a gradient (double backward), else
            ``"finite_difference"`` (the model's own kernels stay).
        supports_sharding: The method runs on FSDP2-sharded parameters (see
            :mod:`hf_gradinit.sharding`): it then finds :class:`~hf_gradinit.sharding.Shards` in
            ``self.shards`` at :meth:`setup` and works on local shards, summing across processes.

    Attributes the driver sets before :meth:`setup`: ``model``, ``config`` (checked and
    resolved), ``loss_fn``, ``comm`` (the :class:`Collective`), ``device``, ``shards`` (``None``
    unless the model is sharded). A method may set
    ``stage`` to a phrase ("during the orthonormal pre-initialisation") that a failure
    message then uses instead of the step count.
    """

    display_name: ClassVar[str] = "initialiser"
    function_name: ClassVar[str] = "initializer"
    config_class: ClassVar[type]
    step_noun: ClassVar[str] = "step"
    one_batch: ClassVar[bool] = False
    prepared_hvp: str = "finite_difference"
    supports_sharding: ClassVar[bool] = False

    def __init__(self, model: nn.Module, config: Any, loss_fn: LossFn | None, comm: Collective):
        self.model = model
        self.config = config
        self.loss_fn = loss_fn
        self.comm = comm
        self.device = model_device(model)
        self.stage: str | None = None
        self.shards: Shards | None = None

    # -- hooks --------------------------------------------------------------------------------
    @classmethod
    def checked_config(cls, config: Any) -> Any:
        """The config to run with: the defaults for ``None``, refused if of another type."""
        if config is None:
            config = cls.config_class()
        if not isinstance(config, cls.config_class):
            name = cls.config_class.__name__
            hint = f" Build it with {name}(**your_dict)." if isinstance(config, dict) else ""
            raise GradInitError(f"{cls.function_name}'s config must be a {name}, got a {type(config).__name__}.{hint}")
        return config

    def parameters(self) -> list[ParamInfo]:
        """The tensors the run may write (swapped for working copies by :class:`PreparedModel`);
        by default every trainable floating-point tensor. Raises a :class:`GradInitError` that
        says why when there are none."""
        infos = trainable_parameters(self.model)
        if not infos:
            raise GradInitError(
                f"{type(self.model).__name__} has no trainable floating-point parameter: nothing to rescale."
                " Check requires_grad (a frozen model has none)."
            )
        return infos

    def check_sharding(self) -> None:
        """Raise a :class:`GradInitError` for settings that cannot run on sharded parameters."""

    def seed(self) -> int:
        """The seed of torch's generators during the run."""
        return int(self.config.seed)

    def prepare_batch(self, batch: Batch) -> Batch:
        """A batch as the steps take it: on the model's device, half precision widened to fp32
        (the model runs in fp32 inside :class:`PreparedModel`)."""
        return promote_half(to_device(batch, self.device))

    def setup(self, prepared: PreparedModel, batch: Batch) -> int:
        """Set up on the first (prepared) batch; return the number of steps to run."""
        raise NotImplementedError

    def step(self, step: int, batch: Batch) -> dict[str, Any]:
        """One step; returns its record (shown on the progress bar by :meth:`postfix`)."""
        raise NotImplementedError

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        return {}

    def final_values(self, first_batch: Batch) -> list[torch.Tensor | None]:
        """The final value of every tensor :meth:`parameters` returned (``None``: unchanged),
        committed into the model only if this returns without an error."""
        raise NotImplementedError

    def result(self, timings: dict[str, float]) -> Any:
        """The result object; ``timings`` holds ``total_s`` and ``setup_s``."""
        raise NotImplementedError

    def hint(self, err: Exception, step: int) -> str:
        """What to change, appended to the message of an unexpected failure."""
        if isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err):
            return " Use smaller batches."
        if step == 0:
            return " Check that the batches match the model's forward signature (or pass loss_fn)."
        return ""

    def where(self, step: int) -> str:
        if self.stage is not None:
            return self.stage
        return "on the first batch, before any change" if step == 0 else f"at {self.step_noun} {step}"


class ScaleLearner(DataDrivenInitializer):
    """A method that keeps every tensor's direction and learns one scale per tensor (GradInit,
    MetaInit): which tensors get a scale, and the final values ``alpha_i * theta0_i``."""

    def skip_reason(self, info: ParamInfo, theta0: torch.Tensor, norm: float) -> str | None:
        """Why a tensor gets no scale (``None``: it gets one)."""
        if excluded(info.name, self.config.exclude):
            return "excluded"
        if norm == 0.0:
            # A zero tensor has no direction to keep (it still takes part in the loss).
            return "zero norm"
        return None

    def select_scaled(self, infos: list[ParamInfo], prepared: PreparedModel) -> list[float]:
        """Set ``scaled_idx`` (positions in ``infos`` that get a scale) and ``skipped`` (name:
        why not); return every tensor's initial norm (float64)."""
        squares = torch.stack([torch.linalg.vector_norm(t, dtype=torch.float64).square() for t in prepared.theta0])
        if self.shards is not None:  # local shards: the whole tensor's norm is a sum over processes
            squares = self.shards.sum(squares)
        norms = squares.sqrt().tolist()
        self.skipped: dict[str, str] = {}
        self.scaled_idx: list[int] = []
        for i, info in enumerate(infos):
            why = self.skip_reason(info, prepared.theta0[i], norms[i])
            if why is None:
                self.scaled_idx.append(i)
            else:
                self.skipped[info.name] = why
        if not self.scaled_idx:
            raise GradInitError(
                f"No tensor of {type(self.model).__name__} can be rescaled by {self.display_name}: all {len(infos)}"
                f" trainable tensors are skipped ({sorted(set(self.skipped.values()))}). It keeps each tensor's"
                " direction, so it needs a randomly initialised model; check config.exclude."
            )
        return norms

    def current_scales(self) -> list[float]:
        """The scale of each tensor of ``scaled_idx``, in that order."""
        raise NotImplementedError

    def scaled_values(self, prepared: PreparedModel, count: int) -> list[torch.Tensor | None]:
        """``alpha_i * theta0_i`` in each tensor's own dtype for the scaled tensors, ``None`` for the rest."""
        final: list[torch.Tensor | None] = [None] * count
        for i, a in zip(self.scaled_idx, self.current_scales(), strict=True):
            final[i] = scaled(prepared.theta0[i], a, prepared.original_dtypes[i])
        return final


def run(
    method: type[DataDrivenInitializer],
    model: nn.Module,
    data: Iterable[Batch] | None,
    config: Any = None,
    *,
    loss_fn: LossFn | None = None,
    distributed: bool | None = None,
) -> Any:
    """Run ``method`` on ``model`` with batches from ``data``; see the module docstring."""
    started = time.perf_counter()
    config = method.checked_config(config)
    name = method.display_name
    if torch.is_inference_mode_enabled():
        raise GradInitError(
            f"{method.function_name} was called under torch.inference_mode(), where nothing can be differentiated;"
            f" call it outside that context (torch.no_grad() is fine: {name} turns gradients on for its own passes)."
        )
    if not isinstance(model, nn.Module):
        raise GradInitError(f"{method.function_name} needs an nn.Module, got {type(model).__name__}.")
    if data is None:
        raise GradInitError(f"{name} needs batches of data: pass a list of batches or a DataLoader.")
    sharded = check_shardable(model, name, supported=method.supports_sharding)
    comm = Collective(distributed)
    if sharded and distributed is False and world_size() > 1:
        raise GradInitError(
            f"{name} was given an FSDP2-sharded model with distributed=False: every sum over a sharded"
            " tensor needs all its processes. Call it on every rank with distributed=None."
        )
    runner = method(model, config, loss_fn, comm)
    if sharded:
        runner.check_sharding()
    infos = runner.parameters()
    if sharded:
        runner.shards = Shards(model, [i.param for i in infos], comm)
    else:  # FSDP gives tied tensors one sharded parameter; only plain storage can be shared by mistake
        try:
            refuse_shared_storage([(i.name, i.param) for i in infos])
        except ValueError as err:
            raise GradInitError(str(err)) from None
    device = runner.device
    step = 0
    # The caller's RNG is kept around data loading too: iterating a DataLoader draws sampler
    # seeds from torch's global generator, which would otherwise shift the training order.
    with comm.failures_shared(), seeded_rng(device, runner.seed()):
        stream = BatchStream(data)
        raw = stream.next_batch()
        if not comm.all(raw is not None, device):
            raise GradInitError(
                "data yielded no batch (on at least one process): it is empty, or an iterator that was"
                " already consumed. Pass a DataLoader or a list of batches (re-iterable data is cycled)."
            )
        try:
            with PreparedModel(model, infos, hvp=runner.prepared_hvp, shards=runner.shards) as prepared:
                first = batch = runner.prepare_batch(raw)
                total = runner.setup(prepared, first)
                setup_s = time.perf_counter() - started
                with tqdm(total=total, desc=name, disable=not config.show_progress, leave=False) as bar:
                    while step < total:
                        if step > 0 and not method.one_batch:
                            raw = stream.next_batch()
                            if not comm.all(raw is not None, device):
                                warnings.warn(
                                    f"data ran out after {step} of {total} {name} {method.step_noun}s; stopping"
                                    " early. Pass a re-iterable (a DataLoader or a list) to cycle through it.",
                                    stacklevel=3,
                                )
                                break
                            batch = runner.prepare_batch(raw)
                        record = runner.step(step, batch)
                        bar.update(1)
                        bar.set_postfix(runner.postfix(record), refresh=False)
                        step += 1
                runner.stage = None
                prepared.commit(runner.final_values(first))
        except GradInitError:
            raise
        except KeyboardInterrupt:
            logger.warning(
                "%s interrupted %s; the model was restored to its state before the call.", name, runner.where(step)
            )
            raise
        except Exception as err:
            raise GradInitError(
                f"{name} failed {runner.where(step)}: {type(err).__name__}: {err}\nThe model was restored to its"
                f" state before the call.{runner.hint(err, step)}"
            ) from err
    result = runner.result({"total_s": time.perf_counter() - started, "setup_s": setup_s})
    logger.info("%s", result.summary(max_rows=10))
    return result
