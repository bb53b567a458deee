"""LSUV (Mishkin & Matas, ICLR 2016, "All you need is a good init") for any model.

Layer-sequential unit-variance initialisation:

1. (optional) orthonormal pre-initialisation: every processed layer's weight, flattened to
   ``(out, in * kernel)``, becomes the Q factor of the QR decomposition of a Gaussian matrix
   (signs fixed by the diagonal of R), and its bias becomes 0;
2. layer by layer, in the order the forward pass *executes* them, the layer's weight is
   multiplied by ``target_std / std(output)`` until the standard deviation of its output on
   one batch is ``target_std`` within ``tol``, with at most ``max_tries`` corrections.

The execution order is found with forward hooks on a real batch, not from the order in
which modules were registered: Hugging Face models register modules in one order (for
example ``q_proj, k_proj, v_proj, out_proj`` then the feed-forward) and may run them in
another, and a layer processed before one that feeds it would be put off target again.

What counts as a layer: ``nn.Linear``, ``nn.Conv1d/2d/3d`` and transformers' ``Conv1D``
(GPT-2 style), or the types in :attr:`LSUVConfig.layer_types`. A layer is processed at its
first call. Tied and frozen weights:

* a frozen weight (``requires_grad=False``) is left alone, and so is its layer;
* a weight shared by several modules is processed at most once, at its first use, and only
  if that first use is a layer: a language-model head tied to the input embedding is
  skipped, because rescaling it would rescale the embedding too and undo every layer
  already processed downstream of it;
* a layer whose output has standard deviation 0 on the batch cannot be rescaled to unit
  variance and is skipped with a note.

Differences from the paper, and why: the paper uses Caffe-era plain CNNs where a layer's
output is a single blob; here a layer's output is the first tensor it returns, and its
standard deviation is taken over every element of it (padding positions of a sequence
batch included). BatchNorm layers use batch statistics during the pass (as in training),
not their untouched running statistics. The pre-initialisation sets biases to 0, as the
paper's Caffe setup and PyPI's ``lsuv`` package do.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...batches import Batch, LossFn, call_model
from ...driver import DataDrivenInitializer, run
from ...errors import GradInitError
from ...model_state import PreparedModel
from ...scales import ParamInfo, excluded, trainable_parameters
from .config import LSUVConfig
from .result import LSUVResult

logger = logging.getLogger(__name__)


def seed_from_weights(model: nn.Module) -> int:
    """A 63-bit seed from the first values of every parameter: the same model gives the same
    seed on every process and device, differently initialised models give different ones."""
    import hashlib

    digest = hashlib.sha256()
    with torch.no_grad():
        for p in model.parameters():
            digest.update(p.detach().reshape(-1)[:64].to("cpu", torch.float64).numpy().tobytes())
    return int.from_bytes(digest.digest()[:8], "little") >> 1


class _StopForward(BaseException):
    """Ends a forward pass once the measured layer has run: the rest would be wasted work.
    A BaseException, so that a model's own ``except Exception`` cannot swallow it."""


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        for item in output:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _moments(output: Any) -> torch.Tensor:
    """``[n, sum, sum of squares]`` of a layer's output, in float64 (so the pooled variance
    loses nothing to cancellation at any sane activation scale)."""
    t = _first_tensor(output)
    if t is None or not t.is_floating_point():
        raise GradInitError(
            f"A layer returned {type(output).__name__}, not a floating-point tensor, so LSUV cannot measure its"
            " output; the model was restored. Exclude it (LSUVConfig.exclude) or narrow LSUVConfig.layer_types."
        )
    x = t.detach().reshape(-1).to(torch.float64)
    return torch.stack(
        [torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device), x.sum(), x.square().sum()]
    )


def _std(moments: torch.Tensor) -> torch.Tensor:
    """Unbiased standard deviation from ``[..., 3]`` pooled moments."""
    n, s1, s2 = moments.unbind(-1)
    var = (s2 - s1 * s1 / n) / (n - 1).clamp_min(1.0)
    return var.clamp_min(0.0).sqrt()


@torch.no_grad()
def orthonormal_(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Fill ``weight`` (viewed as ``(shape[0], rest)``) with orthonormal rows or columns, in place.

    The Q factor of the QR decomposition of a standard Gaussian matrix, with the signs of
    R's diagonal folded into Q so it is drawn uniformly (Haar). Drawn on the CPU from
    ``generator``, so a seed gives the same weights on every device.

    Example:
        >>> import torch
        >>> w = torch.empty(3, 5)
        >>> _ = orthonormal_(w, torch.Generator().manual_seed(0))
        >>> torch.allclose(w @ w.T, torch.eye(3), atol=1e-6)
        True
    """
    rows = weight.shape[0]
    cols = weight.numel() // max(rows, 1)
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    flat = torch.randn(rows, cols, generator=generator, dtype=dtype)
    tall = flat.T if rows < cols else flat
    q, r = torch.linalg.qr(tall)
    q = q * torch.sign(torch.sign(torch.diagonal(r)) + 0.5)  # sign(0) taken as +1
    q = q.T if rows < cols else q
    weight.copy_(q.reshape(weight.shape).to(weight.device, weight.dtype))
    return weight


@dataclass
class _Layer:
    name: str
    module: nn.Module
    weight_name: str
    index: int
    std_init: float
    bias: nn.Parameter | None = None


class LSUV(DataDrivenInitializer):
    """LSUV's hooks for the shared driver (:mod:`hf_gradinit.driver`): set-up discovers the
    layers and pre-initialises them; one step processes one layer, all on the first batch."""

    display_name = "LSUV"
    function_name = "lsuv"
    config_class = LSUVConfig
    step_noun = "layer"
    one_batch = True

    def parameters(self) -> list[ParamInfo]:
        infos = _layer_parameters(self.model, self.config)
        if not infos:
            raise GradInitError(
                f"{type(self.model).__name__} has no trainable weight in a layer LSUV can process (Linear,"
                " Conv1d/2d/3d, transformers' Conv1D, or LSUVConfig.layer_types); a frozen model has none."
            )
        self.infos = infos
        self.names = {id(i.param): i.name for i in infos}  # id(param) -> the name named_parameters() gives it
        self.forward_passes = 0
        self.written: set[int] = set()
        self.skipped: dict[str, str] = {}
        self.records: list[dict[str, Any]] = []
        self.done: list[_Layer] = []
        self.stage = "on the first forward pass, before any change"
        return infos

    def seed(self) -> int:
        if not hasattr(self, "_seed"):
            self._seed = self.config.seed if self.config.seed is not None else seed_from_weights(self.model)
        return self._seed

    def hint(self, err: Exception, step: int) -> str:
        return " Check that the batch matches the model's forward signature (or pass loss_fn to run it)."

    def setup(self, prepared: PreparedModel, batch: Batch) -> int:
        self.prepared = prepared
        self.originals = {id(i.param): t for i, t in zip(self.infos, prepared.theta0, strict=True)}
        self.plan = self.discover(batch, self.device)
        if not self.plan:
            raise GradInitError(
                f"LSUV found no layer to process in {type(self.model).__name__}: {_reasons(self.skipped)}."
            )
        if self.config.orthonormal:
            self.stage = "during the orthonormal pre-initialisation"
            self.pre_initialise(self.plan)
        return len(self.plan)

    def step(self, step: int, batch: Batch) -> dict[str, Any]:
        layer = self.plan[step]
        self.stage = f"at layer {layer.name!r}"
        record = self.process(batch, layer)
        if record is not None:
            self.records.append(record)
            self.done.append(layer)
        return {"layer": layer.name, "record": record}

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        done = record["record"]
        return {"layer": record["layer"][-24:], "std": f"{done['std_at_turn']:.3g}" if done else "-"}

    def final_values(self, first_batch: Batch) -> list[torch.Tensor | None]:
        self.stage = "on the final forward pass"
        self.final_stds(first_batch, self.records, [layer.module for layer in self.done])
        final = [
            info.param.data.to(dtype) if id(info.param) in self.written else None
            for info, dtype in zip(self.infos, self.prepared.original_dtypes, strict=True)
        ]
        self.tensors = {
            info.name: value.detach().cpu().clone()
            for info, value in zip(self.infos, final, strict=True)
            if value is not None
        }
        return final

    def result(self, timings: dict[str, float]) -> LSUVResult:
        for record in self.records:
            record.pop("std_at_turn")
        return LSUVResult(
            layers=self.records,
            skipped=self.skipped,
            tensors=self.tensors,
            config={**self.config.to_dict(), "seed": self.seed()},  # the seed used, derived or given
            timings={"total_s": timings["total_s"], "forward_passes": float(self.forward_passes)},
        )

    def pooled(self, moments: torch.Tensor) -> torch.Tensor:
        """Moments summed over processes (a mean times the number of processes)."""
        return self.comm.mean(moments) * self.comm.world_size if self.comm.active else moments

    def forward(self, batch: Batch) -> None:
        self.forward_passes += 1
        with torch.no_grad():
            if self.loss_fn is not None:
                self.loss_fn(self.model, batch)
            else:
                call_model(self.model, batch)

    def discover(self, batch: Batch, device: torch.device) -> list[_Layer]:
        """One forward pass with hooks: the order layers run in, which module first uses each
        weight, and every layer's output std on the untouched model."""
        cfg = self.config
        module_names = {id(m): n for n, m in self.model.named_modules()}
        layers = [m for m in self.model.modules() if cfg.is_layer(m)]
        if not layers:
            raise GradInitError(
                f"{type(self.model).__name__} has no layer LSUV can process (Linear, Conv1d/2d/3d,"
                " transformers' Conv1D, or LSUVConfig.layer_types)."
            )
        weights = {id(w) for m in layers if isinstance(w := getattr(m, "weight", None), torch.Tensor)}
        owners = [
            m
            for m in self.model.modules()
            if any(id(p) in weights for p in m.parameters(recurse=False)) or cfg.is_layer(m)
        ]
        first_use: dict[int, nn.Module] = {}
        finished: list[nn.Module] = []
        moments: dict[int, torch.Tensor] = {}

        def pre_hook(module: nn.Module, args: Any) -> None:
            for p in module.parameters(recurse=False):
                first_use.setdefault(id(p), module)

        def post_hook(module: nn.Module, args: Any, output: Any) -> None:
            if id(module) not in moments and cfg.is_layer(module):
                moments[id(module)] = _moments(output)
                finished.append(module)

        handles = [m.register_forward_pre_hook(pre_hook) for m in owners]
        handles += [m.register_forward_hook(post_hook) for m in layers]
        try:
            self.forward(batch)
        finally:
            for h in handles:
                h.remove()

        executed = {id(m) for m in finished}
        for m in layers:
            if id(m) not in executed:
                self.skipped[module_names[id(m)]] = "not executed on the batch"
        if self.comm.active:
            count = torch.tensor(float(len(finished)), device=device)
            if float(self.comm.mean(count)) != len(finished):
                raise GradInitError(
                    "The processes ran different numbers of layers on their batches (data-dependent control"
                    " flow?); LSUV needs the same layers on every process. Pass distributed=False to let each"
                    " process run its own LSUV."
                )
        stds = _std(self.pooled(torch.stack([moments[id(m)] for m in finished]))).tolist() if finished else []

        plan: list[_Layer] = []
        planned: dict[int, str] = {}
        for index, (module, std) in enumerate(zip(finished, stds, strict=True)):
            name = module_names[id(module)]
            weight = getattr(module, "weight", None)
            if not isinstance(weight, nn.Parameter):
                self.skipped[name] = "no weight parameter"
                continue
            weight_name = self.names.get(id(weight), f"{name}.weight" if name else "weight")
            first = first_use.get(id(weight))
            if not weight.requires_grad:
                self.skipped[name] = "frozen weight"
            elif not weight.is_floating_point():
                self.skipped[name] = "weight is not floating point"
            elif excluded(weight_name, cfg.exclude):
                self.skipped[name] = "excluded"
            elif id(weight) in planned:
                self.skipped[name] = f"shared weight: already processed at {planned[id(weight)]!r}"
            elif first is not module:
                user = module_names.get(id(first), "?")
                self.skipped[name] = (
                    f"tied weight: {weight_name!r} is first used by {user!r}; rescaling it would undo the layers"
                    " after that"
                )
            else:
                bias = getattr(module, "bias", None)
                bias = bias if isinstance(bias, nn.Parameter) and bias.requires_grad else None
                plan.append(_Layer(name, module, weight_name, index, std, bias))
                planned[id(weight)] = name
        return plan

    @torch.no_grad()
    def pre_initialise(self, plan: list[_Layer]) -> None:
        generator = torch.Generator().manual_seed(self.seed())
        for layer in plan:
            orthonormal_(layer.module.weight.data, generator)
            self.written.add(id(layer.module.weight))
            if layer.bias is not None:
                layer.bias.data.zero_()
                self.written.add(id(layer.bias))

    @torch.no_grad()
    def undo_pre_initialisation(self, layer: _Layer) -> None:
        """A skipped layer keeps the weights it came with."""
        for p in (layer.module.weight, layer.bias):
            if p is not None and id(p) in self.written:
                p.data.copy_(self.originals[id(p)])
                self.written.discard(id(p))

    def measure(self, batch: Batch, module: nn.Module) -> float:
        """Output std of ``module`` at its first call on ``batch`` (pooled over processes)."""
        box: list[torch.Tensor] = []

        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            box.append(_moments(output))
            raise _StopForward

        handle = module.register_forward_hook(hook)
        try:
            self.forward(batch)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not box:
            raise GradInitError(
                "A layer that ran on the batch before did not run again: is the forward random? The model was restored."
            )
        return float(_std(self.pooled(box[0])))

    @torch.no_grad()
    def process(self, batch: Batch, layer: _Layer) -> dict[str, Any] | None:
        cfg = self.config
        weight = layer.module.weight.data
        std = self.measure(batch, layer.module)
        std_before, tries, scale = std, 0, 1.0
        if not math.isfinite(std):
            raise GradInitError(
                f"The output of {layer.name!r} is not finite (std {std}) before LSUV rescaled it; the model was"
                " restored. Check the data and the layers before it."
            )
        if std == 0.0 or not math.isfinite(cfg.target_std / std):
            self.skipped[layer.name] = "output std is 0: cannot be rescaled to unit variance"
            self.undo_pre_initialisation(layer)
            return None
        while abs(std - cfg.target_std) > cfg.tol and tries < cfg.max_tries:
            factor = cfg.target_std / std
            weight.mul_(factor)
            self.written.add(id(layer.module.weight))
            scale *= factor
            tries += 1
            std = self.measure(batch, layer.module)
            if not math.isfinite(std) or std == 0.0:
                raise GradInitError(
                    f"The output std of {layer.name!r} became {std} after rescaling by {scale:g}; the model was"
                    " restored."
                )
        return {
            "layer": layer.name,
            "weight": layer.weight_name,
            "index": layer.index,
            "std_init": layer.std_init,
            "std_before": std_before,
            "tries": tries,
            "scale": scale,
            "converged": abs(std - cfg.target_std) <= cfg.tol,
            "std_at_turn": std,
        }

    def final_stds(self, batch: Batch, records: list[dict], modules: list[nn.Module]) -> None:
        """One full forward of the finished model: each processed layer's output std."""
        moments: dict[int, torch.Tensor] = {}

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if id(module) not in moments:
                moments[id(module)] = _moments(output)

        handles = [m.register_forward_hook(hook) for m in modules]
        try:
            self.forward(batch)
        finally:
            for h in handles:
                h.remove()
        if modules:
            stds = _std(self.pooled(torch.stack([moments[id(m)] for m in modules]))).tolist()
            for record, std in zip(records, stds, strict=True):
                record["std_after"] = std


def lsuv(
    model: nn.Module,
    data: Iterable[Batch],
    config: LSUVConfig | None = None,
    *,
    loss_fn: LossFn | None = None,
    distributed: bool | None = None,
) -> LSUVResult:
    """Layer-sequential unit-variance initialisation of ``model``, in place (module docstring).

    Uses the first batch of ``data``. During the run the model is in eval mode (no dropout)
    with BatchNorm on batch statistics, in fp32, under ``config.seed``; afterwards its modes,
    dtypes, buffers and the caller's RNG state are as before. If anything fails, the
    parameters are restored bit for bit and a :class:`~hf_gradinit.GradInitError` says why.

    Args:
        model: Any ``nn.Module``; Hugging Face models with keyword inputs included.
        data: Batches: the first one is used. A dict is passed as ``model(**batch)``, a
            tuple or list as ``model(*batch)``, anything else as ``model(batch)``.
        config: The settings; ``None`` uses :class:`LSUVConfig`'s defaults (the paper's).
        loss_fn: Only a way to run the forward pass: when given, ``loss_fn(model, batch)``
            is called instead of ``model(...)`` and its value is ignored (useful when a
            batch is not the model's argument list, e.g. ``(inputs, labels)`` for a
            ``forward(inputs)``). LSUV itself needs no loss.
        distributed: In a multi-process run the output statistics are pooled over all
            processes' batches, so every process reaches the same weights; ``None`` does so
            whenever torch.distributed is initialised with several processes.

    Returns:
        An :class:`LSUVResult` with per-layer figures and the final tensors (to re-apply
        with :meth:`LSUVResult.apply`).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from hf_gradinit import LSUVConfig, lsuv
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> result = lsuv(model, [torch.randn(64, 8)], LSUVConfig(show_progress=False))
        >>> [r["layer"] for r in result.layers]
        ['0', '2']
        >>> all(abs(r["std_after"] - 1.0) <= 0.1 for r in result.layers)
        True
    """
    return run(LSUV, model, data, config, loss_fn=loss_fn, distributed=distributed)


def _layer_parameters(model: nn.Module, config: LSUVConfig) -> list[ParamInfo]:
    """The trainable tensors LSUV may write: weights and biases of layers."""
    ids = set()
    for m in model.modules():
        if config.is_layer(m):
            ids.update(id(p) for p in m.parameters(recurse=False))
    return [info for info in trainable_parameters(model) if id(info.param) in ids]


def _reasons(skipped: dict[str, str]) -> str:
    if not skipped:
        return "no layer ran on the batch"
    first = next(iter(skipped.items()))
    return f"{len(skipped)} layer(s) skipped (first: {first[0]!r}: {first[1]})"
