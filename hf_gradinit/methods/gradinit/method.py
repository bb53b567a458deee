"""GradInit: :func:`gradinit`, and its step for the shared driver (:class:`GradInit`)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ...batches import Batch, LossFn, split_batch
from ...driver import ScaleLearner, run
from ...errors import GradInitError
from ...functional import LossEvaluator, grad_norm
from ...model_state import PreparedModel
from ...scales import ParamInfo
from .config import GradInitConfig
from .objective import constraint_scale_gradient, objective_scale_gradient
from .result import GradInitResult
from .scale_optimizer import ScaleAdam

logger = logging.getLogger(__name__)


def gradinit(
    model: nn.Module,
    data: Iterable[Batch],
    config: GradInitConfig | None = None,
    *,
    loss_fn: LossFn | None = None,
    distributed: bool | None = None,
) -> GradInitResult:
    """Learn the initial norm of every parameter tensor of ``model`` and rescale it in place.

    Each trainable floating-point tensor with a non-zero norm gets one scale ``alpha_i``
    (its direction is kept), learned so that one step of the optimizer you will train with
    lowers the loss as much as possible while ``||g||_p <= gamma`` (GradInit, Zhu et al.,
    NeurIPS 2021; :class:`GradInitConfig` states the problem). Each iteration takes one batch
    and splits it into the overlapping minibatches ``S`` and ``S~``; if the gradient norm on
    ``S`` exceeds ``gamma`` it takes a step that lowers the gradient norm (a constraint step),
    otherwise a step that lowers the loss on ``S~`` after the virtual optimizer step (an
    objective step). Only the scales are learned; the model ends with ``alpha_i theta0_i``.

    During the run the model is in eval mode (no dropout) with BatchNorm on batch statistics,
    in fp32, without activation checkpointing, under ``config.seed``; afterwards its modes,
    dtypes, buffers (BatchNorm running statistics included), attention setting, checkpointing
    and the caller's RNG state are as before. If anything fails (an exception, a non-finite
    value, Ctrl-C) the parameters are restored bit for bit and the error says what to change.

    Args:
        model: Any ``nn.Module``: a Hugging Face model, or any module. Its parameters must
            be materialised (not on the meta device).
        data: An iterable of batches: a ``DataLoader``, a list... Each batch is a dict of
            tensors (``model(**batch)``), a tuple or list (``model(*batch)``), or anything
            ``loss_fn`` understands. Re-iterable data is cycled until ``config.iters``
            iterations; a one-shot iterator that runs out ends the run early with a warning.
        config: The settings; ``None`` uses :class:`GradInitConfig`'s defaults (Adam target,
            the paper's Transformer recipe). Set ``eta`` and ``target`` to the learning rate
            and optimizer you will train with.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``. Without it the loss is the model
            output's ``.loss`` (Hugging Face models compute it when the batch has labels).
        distributed: In a multi-process run (``torchrun``, ``accelerate launch``) each process
            passes its own shard of the data; gradients are averaged across processes as in a
            DDP step, so every process learns the same scales (see
            :mod:`hf_gradinit.distributed`). ``None`` does so whenever torch.distributed is
            initialised with several processes; ``False`` runs each process on its own.

    Returns:
        A :class:`GradInitResult` with the learned scales, per-iteration history and timings.

    Raises:
        GradInitError: Bad input (no batch, no loss, nothing to rescale, meta tensors, a
            non-finite initial loss) before any work, or a failure during the run, after the
            model has been restored.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from hf_gradinit import GradInitConfig, gradinit
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> batches = [(torch.randn(48, 8), torch.randint(0, 2, (48,))) for _ in range(4)]
        >>> loss_fn = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])
        >>> cfg = GradInitConfig(target="sgd", eta=0.1, iters=20, show_progress=False)
        >>> result = gradinit(model, batches, cfg, loss_fn=loss_fn)
        >>> sorted(result.scales)
        ['0.bias', '0.weight', '2.bias', '2.weight']
    """
    return run(GradInit, model, data, config, loss_fn=loss_fn, distributed=distributed)


class GradInit(ScaleLearner):
    """GradInit's hooks for the shared driver (:mod:`hf_gradinit.driver`): one iteration is
    one constraint or objective step on one batch."""

    display_name = "GradInit"
    function_name = "gradinit"
    config_class = GradInitConfig
    step_noun = "iteration"
    supports_sharding = True

    @classmethod
    def checked_config(cls, config: Any) -> GradInitConfig:
        return super().checked_config(config).resolve()

    def parameters(self) -> list[ParamInfo]:
        self.infos = infos = super().parameters()
        self.p = self.config.norm_order
        self.history: list[dict] = []
        return infos

    def check_sharding(self) -> None:
        cfg = self.config
        refused = {
            "hvp='exact'": cfg.hvp == "exact",
            "tied_lookahead='input_only'": cfg.tied_lookahead == "input_only",
            "compile=True": cfg.compile,
        }
        bad = [k for k, v in refused.items() if v]
        if bad:
            raise GradInitError(
                f"GradInit on an FSDP2-sharded model cannot use {', '.join(bad)}: the sharded backward is first"
                " order, FSDP all-gathers its own parameters (no substituted tensor can be read) and the"
                " compiled path is not tested with FSDP. Use the defaults (hvp='finite_difference',"
                " tied_lookahead='all', compile=False), or run GradInit before sharding."
            )

    @property
    def prepared_hvp(self) -> str:  # type: ignore[override]
        return self.config.hvp

    def hint(self, err: Exception, step: int) -> str:
        message = str(err)
        if "derivative for" in message and "not implemented" in message and self.config.hvp == "exact":
            return (
                " An operation of the model has no double backward, which hvp='exact' needs;"
                " use hvp='finite_difference' (first order only)."
            )
        if isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in message:
            return " Use smaller GradInit batches, or hvp='finite_difference' (no double-backward graph)."
        return super().hint(err, step)

    def setup(self, prepared: PreparedModel, batch: Batch) -> int:
        cfg = self.config
        self.prepared = prepared
        infos = self.infos
        self.evaluator = LossEvaluator(
            self.model,
            [i.name for i in infos],
            [i.param for i in infos],
            self.loss_fn,
            compile=cfg.compile,
            shards=self.shards,
        )
        norms = self.select_scaled(self.infos, prepared)
        self.init_norms = {self.infos[i].name: norms[i] for i in self.scaled_idx}
        kinds = [self.infos[i].kind for i in self.scaled_idx]
        inf = float("inf")
        low = {"weight": cfg.min_scale, "bias": cfg.bias_min_scale, "norm": cfg.norm_min_scale}
        high = {"weight": cfg.max_scale, "bias": cfg.bias_max_scale, "norm": cfg.norm_max_scale}
        self.optimizer = ScaleAdam(
            lr=torch.tensor([cfg.norm_lr if k == "norm" else cfg.lr for k in kinds]),
            betas=cfg.betas,
            eps=cfg.eps,
            clip=cfg.clip,
            low=torch.tensor([low[k] for k in kinds]),
            high=torch.tensor([inf if high[k] is None else high[k] for k in kinds]),
            separate_second_moment=cfg.separate_second_moment,
        )
        self.held = self._tied_output() if cfg.tied_lookahead == "input_only" else None
        self.theta0_scaled = [prepared.theta0[i] for i in self.scaled_idx]
        # The parameters' working copies (on a sharded model, their local shards): the steps
        # write theta' and theta + eps v into them, and every iteration ends by resetting them
        # to alpha * theta0.
        self.working = list(self.evaluator.params) if self.shards is not None else [i.param.data for i in self.infos]
        self.working_scaled = [self.working[i] for i in self.scaled_idx]
        logger.info(
            "GradInit: rescaling %d tensors (%d skipped) of %s; target=%s eta=%g gamma=%g (||g||_%d),"
            " %d iterations, scale lr %g, hvp=%s%s%s",
            len(self.scaled_idx), len(self.skipped), type(self.model).__name__, cfg.target, cfg.eta,
            cfg.gamma, self.p, cfg.iters, cfg.lr, cfg.hvp,
            f" ({cfg.fd_scheme})" if cfg.hvp == "finite_difference" else "", ", compiled" if cfg.compile else "",
        )  # fmt: skip
        return cfg.iters

    def _tied_output(self) -> tuple[nn.Module, int]:
        """The output projection and the index of the input embedding it is tied to."""
        get = getattr(self.model, "get_output_embeddings", None)
        out = get() if callable(get) else None
        weight = getattr(out, "weight", None) if out is not None else None
        embedded = any(isinstance(m, nn.Embedding) and m.weight is weight for m in self.model.modules())
        index = next((i for i, info in enumerate(self.infos) if info.param is weight), None)
        if weight is None or not embedded or index is None:
            raise GradInitError(
                f"tied_lookahead='input_only' needs an output projection tied to an input embedding, and"
                f" {type(self.model).__name__}'s get_output_embeddings() "
                + ("is missing or returns None." if weight is None else "is not tied to a trainable nn.Embedding.")
                + " Use tied_lookahead='all' (the default)."
            )
        return out, index

    def step(self, step: int, batch: Batch) -> dict:
        cfg, ev = self.config, self.evaluator
        started = time.perf_counter()
        s, s_tilde = split_batch(batch, cfg.overlap)
        loss, grads = ev.grad(s)
        # As a DDP step would: one gradient for the union of all processes' shards, so every
        # process forms the same virtual step and sees the same norm. (FSDP's reduce-scatter
        # has already averaged a sharded model's gradients.)
        if self.shards is None:
            self.comm.mean_(grads)
        gnorm = grad_norm(grads, self.p, self.shards)
        # The one synchronisation the branch needs: loss and norm in one transfer.
        loss_value, gnorm_value = torch.stack([self.comm.mean(loss).to(gnorm), gnorm]).tolist()
        self._check_finite(step, loss=loss_value, grad_norm=gnorm_value)
        record: dict = {"step": step, "loss": loss_value, "grad_norm": gnorm_value}
        if gnorm_value > cfg.gamma:
            record["kind"] = "constraint"
            scale_grad = constraint_scale_gradient(ev, s, grads, gnorm_value, self.theta0_scaled, self.scaled_idx, cfg)
        else:
            record["kind"] = "objective"
            lookahead, scale_grad = objective_scale_gradient(
                ev, s_tilde, grads, gnorm_value, self.theta0_scaled, self.scaled_idx, cfg, held=self.held
            )
            lookahead = float(self.comm.mean(lookahead))
            record["lookahead_loss"] = lookahead
            record["objective"] = lookahead / cfg.eta
            self._check_finite(step, lookahead_loss=lookahead)
        del grads
        if self.shards is None:
            scale_grad = self.comm.mean(scale_grad)
        else:
            # Each process holds <averaged gradient, theta0> over its own shards: the whole
            # product is the sum, which equals the mean of per-process products of a DDP run.
            scale_grad = self.shards.sum(scale_grad)
        scale_grad = scale_grad.cpu()
        if not bool(torch.isfinite(scale_grad).all()):
            bad = [self.infos[self.scaled_idx[j]].name for j in torch.nonzero(~torch.isfinite(scale_grad)).flatten()]
            raise GradInitError(
                f"Non-finite scale gradient at GradInit iteration {step} ({record['kind']} step) for {bad[:3]};"
                " the model was restored. Lower eta or the scale lr, or use hvp='exact' if it was a"
                " finite-difference constraint step."
            )
        alpha = self.optimizer.step(scale_grad, constraint=record["kind"] == "constraint")
        with torch.no_grad():
            torch._foreach_copy_(self.working, self.prepared.theta0)
            torch._foreach_mul_(self.working_scaled, alpha.tolist())
        if self.device.type == "cuda":  # kernels run asynchronously: charge them to this iteration
            torch.cuda.synchronize(self.device)
        record["seconds"] = time.perf_counter() - started
        self.history.append(record)
        return record

    def _check_finite(self, step: int, **values: float) -> None:
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if not bad:
            return
        if step == 0 and "loss" in bad:
            raise GradInitError(
                f"The model's loss is {bad['loss']} on the first batch, before GradInit changed anything."
                " Check the data (labels in range, padding masked with -100) and the model's initialisation."
            )
        raise GradInitError(
            f"GradInit hit a non-finite value at iteration {step}: {bad}; the model was restored."
            " Lower the scale learning rate (lr) or eta, or tighten gamma / max_scale."
        )

    def postfix(self, record: dict) -> dict[str, str]:
        out = {"loss": f"{record['loss']:.4g}", "|g|": f"{record['grad_norm']:.4g}"}
        if "lookahead_loss" in record:
            out["next"] = f"{record['lookahead_loss']:.4g}"
        out["cons"] = str(sum(1 for h in self.history if h["kind"] == "constraint"))
        return out

    def current_scales(self) -> list[float]:
        return self.optimizer.alpha.tolist()

    def final_values(self, first_batch: Batch) -> list[torch.Tensor | None]:
        return self.scaled_values(self.prepared, len(self.infos))

    def result(self, timings: dict[str, float]) -> GradInitResult:
        alpha = self.optimizer.alpha.tolist()
        names = [self.infos[i].name for i in self.scaled_idx]

        def mean_seconds(kind: str) -> float:
            secs = [h["seconds"] for h in self.history if h["kind"] == kind]
            return sum(secs) / len(secs) if secs else math.nan

        return GradInitResult(
            scales=dict(zip(names, alpha, strict=True)),
            init_norms=self.init_norms,
            kinds={self.infos[i].name: self.infos[i].kind for i in self.scaled_idx},
            skipped=self.skipped,
            history=self.history,
            config=self.config.to_dict(),
            timings={
                **timings,
                "iterations_s": sum(h["seconds"] for h in self.history),
                "objective_step_s": mean_seconds("objective"),
                "constraint_step_s": mean_seconds("constraint"),
            },
        )
