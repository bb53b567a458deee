"""Cost of one GradInit iteration relative to one plain training step, in time and in memory.

What it measures
----------------
For each model, on one fixed batch (random token ids / random images, so no download), in one
process:

* ``seconds / train step``: a plain training step on that batch, in train mode (dropout on,
  BatchNorm on batch statistics): ``zero_grad(set_to_none=True)``, forward, loss, backward,
  ``optimizer.step()`` (AdamW for Marian, SGD with momentum 0.9 for the CNN), with the attention
  kernel the model trains with (Marian: ``attn_implementation="sdpa"``, torch's default SDPA
  kernel choice), on its own model and optimizer kept warm for the whole benchmark.
* ``seconds / GradInit iteration``: ``hf_gradinit.gradinit`` fed copies of the *same* batch,
  read from ``result.history[i]["seconds"]`` (the engine's per-iteration wall time: the split
  into ``S`` / ``S~``, every gradient, the scale update and the rewrite of the weights). The
  step kind is forced by ``gamma``: ``1e12`` (``||g||_p <= gamma`` always) gives objective
  steps only, ``1e-12`` constraint steps only; each run checks the kinds it got. Each run
  starts from a fresh copy of the same initial model, for ``hvp="exact"`` and for
  ``hvp="finite_difference"``. The first ``--warmup`` iterations are dropped and the median of
  the next ``--repeats`` is reported.
* interleaving: the batches reach ``gradinit`` through a generator that, before yielding
  each one, times one training step and one gradient pass (below). So each ratio compares
  iterations and steps measured side by side: a shared CPU (steal time) drifts by more than
  the effects measured here. The same warm-up is dropped from them. A standalone series of
  training steps is also timed first (in the JSON).
* ``pass``: one first-order gradient pass (forward + ``autograd.grad``) on a 2/3-size
  minibatch in GradInit's mode (eval, no dropout; BatchNorm on batch statistics).
  GradInit splits each batch into two overlapping minibatches ``S`` and ``S~`` of 2/3 of the
  batch each (overlap 0.5), so an objective step is two such passes, a forward
  finite-difference constraint step also two (a central one three), an exact constraint step
  one pass, one pass that keeps its graph and a double backward; ``iter / pass`` says how
  many passes an iteration actually costs.
* peak memory. On CUDA: ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``, i.e. everything allocated on the device (model, optimizer
  state, gradients, activations, GradInit's copies). On CPU there is no allocator counter,
  and peak RSS hides freed-and-reused pages, so the script records every allocation and free
  that goes through PyTorch's CPU allocator with ``torch.profiler.profile(profile_memory=True)``
  and takes the peak of their running sum (the peak *growth* over the measured region), then
  adds the bytes of the tensors already alive when the region starts (parameters, buffers,
  the batch, and for training the optimizer state), counted once per storage. ``peak`` is
  that total, the analogue of ``max_memory_allocated``; the JSON also keeps the growth alone.
  The training region is two steps after warm-up (so the previous step's gradients are freed
  inside it); the GradInit region is a whole ``gradinit`` call of ``--warmup`` + 1 iterations,
  set-up copies included. Memory runs are separate from timing runs (the profiler slows
  things down). Limits: memory allocated outside PyTorch's allocator (oneDNN scratch pads,
  the Python heap) is not seen, and OpenMP worker threads do not report to the profiler
  (PyTorch allocates little there).

Usage
-----
::

    python benchmarks/bench_gradinit.py --quick                          # smoke run, < 1 min
    python benchmarks/bench_gradinit.py --threads 2 --repeats 5 --out benchmarks/results/cpu.json
    python benchmarks/bench_gradinit.py --models marian --hvp finite_difference

Models: ``marian`` (Post-LN Marian, d_model 256, 3+3 layers, 4 heads, FFN 1024, vocab 8000,
ReLU, ``scale_embedding``, dropout 0.1, 64 sentence pairs of 24 tokens, loss from ``labels``),
``cnn`` (CIFAR ResNet-20 with BatchNorm, batch 128 of 3x32x32, cross-entropy through
``loss_fn``) and ``marian-iwslt`` (shaped like fairseq ``transformer_iwslt_de_en``: 6+6 layers,
d_model 512, 4 heads, FFN 1024, vocab 10000, dropout 0.3, 128 x 32 = 4096 tokens a batch)
and ``resnet110`` (the CNN at full depth: ResNet-110 with BatchNorm, 1.7M parameters), the last
two run by default only when CUDA is available. The script prints a Markdown table and writes
every raw measurement, the command and the machine to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import transformers
from torch import nn
from torch.nn import functional as F

import hf_gradinit
from hf_gradinit import GradInitConfig, gradinit
from hf_gradinit.batches import split_batch

Batch = Any
LossFn = Callable[[nn.Module, Batch], torch.Tensor]

OBJECTIVE_GAMMA = 1e12  # ||g||_p <= gamma on every iteration: objective steps only
CONSTRAINT_GAMMA = 1e-12  # ||g||_p > gamma on every iteration: constraint steps only
# How constraint steps get H v: GradInitConfig settings of each mode the benchmark compares.
HVP_MODES: dict[str, dict[str, Any]] = {
    "exact": {"hvp": "exact"},
    "finite_difference": {"hvp": "finite_difference", "fd_scheme": "forward"},  # the default
    "fd_central": {"hvp": "finite_difference", "fd_scheme": "central"},
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
STEP_KINDS = ("objective", "constraint")
MODELS = ("marian", "cnn", "marian-iwslt", "resnet110")


# --------------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------------
@dataclass
class Workload:
    """One model, one batch, and how it trains."""

    name: str
    build: Callable[[], nn.Module]
    batch: Batch
    loss_fn: LossFn | None
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    gradinit_config: dict[str, Any]
    description: dict[str, Any] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32

    def build_trained(self) -> nn.Module:
        """The model as it trains (in ``dtype``); GradInit runs on it in fp32 either way."""
        return self.build().to(self.dtype)


def marian_workload(
    name: str,
    *,
    d_model: int,
    layers: int,
    ffn: int,
    vocab: int,
    sentences: int,
    tokens: int,
    dropout: float,
    device: torch.device,
    seed: int = 0,
) -> Workload:
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=vocab,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn,
        max_position_embeddings=max(128, tokens),
        activation_function="relu",
        scale_embedding=True,
        dropout=dropout,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )

    def build() -> nn.Module:
        torch.manual_seed(seed)
        return MarianMTModel(config).to(device)

    g = torch.Generator().manual_seed(seed + 1)
    src = torch.randint(3, vocab, (sentences, tokens), generator=g)
    tgt = torch.randint(3, vocab, (sentences, tokens), generator=g)
    batch = {"input_ids": src, "attention_mask": torch.ones_like(src), "labels": tgt}
    batch = {k: v.to(device) for k, v in batch.items()}
    return Workload(
        name=name,
        build=build,
        batch=batch,
        loss_fn=None,
        optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=5e-4, betas=(0.9, 0.98), weight_decay=1e-4),
        gradinit_config={"target": "adam", "eta": 5e-4},
        description={
            "model": "MarianMTModel (Post-LN), transformers' own init",
            "d_model": d_model,
            "layers": f"{layers}+{layers}",
            "heads": 4,
            "ffn": ffn,
            "vocab": vocab,
            "dropout": dropout,
            "batch": f"{sentences} sentence pairs x {tokens} tokens (random ids), labels given",
            "train_optimizer": "AdamW(lr=5e-4, betas=(0.9, 0.98), weight_decay=1e-4)",
            "gradinit": "target adam, eta 5e-4, ||g||_1",
        },
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016): 3 stages of ``blocks`` basic blocks; ResNet-20 by default."""

    def __init__(self, blocks: int = 3, widths: tuple[int, int, int] = (16, 32, 64), classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers: list[nn.Module] = []
        cin = widths[0]
        for stage, width in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(cin, width, 2 if stage > 0 and b == 0 else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def cross_entropy_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    images, labels = batch
    return F.cross_entropy(model(images), labels)


def cnn_workload(
    name: str, *, blocks: int, widths: tuple[int, int, int], batch_size: int, size: int, device: torch.device
) -> Workload:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return CifarResNet(blocks, widths).to(device)

    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(batch_size, 3, size, size, generator=g), torch.randint(0, 10, (batch_size,), generator=g))
    batch = tuple(t.to(device) for t in batch)
    return Workload(
        name=name,
        build=build,
        batch=batch,
        loss_fn=cross_entropy_loss,
        optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4),
        gradinit_config={"target": "sgd", "eta": 0.1, "lr": 1e-3},
        description={
            "model": f"CIFAR ResNet-{6 * blocks + 2} with BatchNorm, widths {list(widths)}",
            "batch": f"{batch_size} x 3x{size}x{size} (random images), 10 classes",
            "train_optimizer": "SGD(lr=0.1, momentum=0.9, weight_decay=1e-4)",
            "gradinit": "target sgd (normalised step), eta 0.1, scale lr 1e-3, ||g||_2",
        },
    )


def make_workload(name: str, quick: bool, device: torch.device) -> Workload:
    if name == "marian":
        if quick:
            return marian_workload(
                name, d_model=64, layers=1, ffn=128, vocab=1000, sentences=12, tokens=8, dropout=0.1, device=device
            )
        return marian_workload(
            name, d_model=256, layers=3, ffn=1024, vocab=8000, sentences=64, tokens=24, dropout=0.1, device=device
        )
    if name == "marian-iwslt":
        if quick:
            return marian_workload(
                name, d_model=128, layers=2, ffn=256, vocab=2000, sentences=16, tokens=16, dropout=0.3, device=device
            )
        return marian_workload(
            name, d_model=512, layers=6, ffn=1024, vocab=10000, sentences=128, tokens=32, dropout=0.3, device=device
        )
    if name == "resnet110":
        if quick:
            return cnn_workload(name, blocks=2, widths=(8, 16, 32), batch_size=24, size=16, device=device)
        return cnn_workload(name, blocks=18, widths=(16, 32, 64), batch_size=128, size=32, device=device)
    if name == "cnn":
        if quick:
            return cnn_workload(name, blocks=1, widths=(8, 16, 32), batch_size=24, size=16, device=device)
        return cnn_workload(name, blocks=3, widths=(16, 32, 64), batch_size=128, size=32, device=device)
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tensors_of(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors_of(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors_of(v)


def live_bytes(*objs: Any) -> int:
    """Bytes of the distinct storages behind the tensors in ``objs`` (each storage once)."""
    seen: dict[int, int] = {}
    for obj in objs:
        for t in tensors_of(obj):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (kineto prints a line whenever a profiler starts or stops)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


class PeakMemory:
    """Peak bytes allocated inside a ``with`` block (see the module docstring for the method).

    ``baseline`` is what is alive on entry; ``growth`` the peak of what the block allocated
    beyond it; ``peak = baseline + growth``; ``end`` what the block left allocated.
    """

    def __init__(self, device: torch.device, baseline_objs: tuple[Any, ...]):
        self.device = device
        self.baseline_objs = baseline_objs
        self.baseline = 0
        self.growth = 0
        self.end = 0
        self.method = ""

    @property
    def peak(self) -> int:
        return self.baseline + self.growth

    def as_dict(self) -> dict[str, Any]:
        return {
            "peak_bytes": self.peak,
            "baseline_bytes": self.baseline,
            "growth_bytes": self.growth,
            "end_bytes": self.end,
            "memory_method": self.method,
        }

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated (baseline: memory_allocated on entry)"
        else:
            self.baseline = live_bytes(*self.baseline_objs)
            self.method = (
                "CPU: bytes of live tensors on entry + peak running sum of the CPU allocator's"
                " alloc/free events recorded by torch.profiler(profile_memory=True)"
            )
            self._prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
            with quiet_stderr(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._prof.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.growth = torch.cuda.max_memory_allocated(self.device) - self.baseline
            self.end = torch.cuda.memory_allocated(self.device) - self.baseline
            return
        with quiet_stderr():
            self._prof.__exit__(*exc)
        if exc[0] is not None:
            return
        events = [e for e in self._prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events = [e for e in events if e.device_type() == torch.autograd.DeviceType.CPU]
        events.sort(key=lambda e: e.start_ns())
        running = peak = 0
        for e in events:
            running += e.nbytes()
            peak = max(peak, running)
        self.growth = peak
        self.end = running
        del self._prof


def compute_loss(model: nn.Module, batch: Batch, loss_fn: LossFn | None) -> torch.Tensor:
    if loss_fn is not None:
        return loss_fn(model, batch)
    return model(**batch).loss


def train_step(model: nn.Module, batch: Batch, opt: torch.optim.Optimizer, loss_fn: LossFn | None) -> None:
    opt.zero_grad(set_to_none=True)
    loss = compute_loss(model, batch, loss_fn)
    loss.backward()
    opt.step()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


class Trainer:
    """The reference work, kept warm for the whole benchmark of one model: a training step
    (``train`` mode, its own model and optimizer) and a first-order gradient pass on a 2/3-size
    minibatch in GradInit's mode (``eval``, BatchNorm on batch statistics, its own model)."""

    def __init__(self, w: Workload, device: torch.device):
        self.w = w
        self.device = device
        self.model = w.build_trained()
        self.model.train()
        self.opt = w.optimizer(self.model)
        self.pass_model = w.build()
        self.pass_model.eval()
        for m in self.pass_model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase):
                m.train()
                m.track_running_stats = False
        self.pass_params = [p for p in self.pass_model.parameters() if p.requires_grad]
        self.sub_batch = split_batch(w.batch, 0.5)[0]  # GradInit's S at the default overlap

    def step(self) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        train_step(self.model, self.w.batch, self.opt, self.w.loss_fn)
        sync(self.device)
        return time.perf_counter() - t0

    def grad_pass(self) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        grads = torch.autograd.grad(compute_loss(self.pass_model, self.sub_batch, self.w.loss_fn), self.pass_params)
        sync(self.device)
        del grads
        return time.perf_counter() - t0

    def interleaved(self, n: int, train_s: list[float], pass_s: list[float]) -> Iterator[Batch]:
        """``n`` copies of the batch for ``gradinit``; before handing out each one, time a
        training step and a gradient pass, so the reference is measured under the same machine
        conditions as the GradInit iteration that follows (a shared CPU drifts a lot)."""
        for _ in range(n):
            train_s.append(self.step())
            pass_s.append(self.grad_pass())
            yield self.w.batch


def measure_training(trainer: Trainer, warmup: int, repeats: int) -> dict[str, Any]:
    """Standalone timing of the training step and the gradient pass, then the training step's peak memory."""
    w, device = trainer.w, trainer.device
    seconds: list[float] = []
    passes: list[float] = []
    for i in range(warmup + repeats):
        seconds.append(trainer.step())
        passes.append(trainer.grad_pass())
        log(
            f"  {w.name}: train step {i + 1}/{warmup + repeats}: {seconds[-1]:.3f} s (gradient pass {passes[-1]:.3f} s)"
        )
    trainer.opt.zero_grad(set_to_none=True)
    model = trainer.model
    state = list(trainer.opt.state.values())
    with PeakMemory(device, (list(model.parameters()), list(model.buffers()), w.batch, state)) as mem:
        for _ in range(2):
            train_step(model, w.batch, trainer.opt, w.loss_fn)
    out = {
        "attn_implementation": getattr(getattr(model, "config", None), "_attn_implementation", None),
        "seconds_all": seconds,
        "seconds": seconds[warmup:],
        "median_s": median(seconds[warmup:]),
        "grad_pass_seconds_all": passes,
        "grad_pass_median_s": median(passes[warmup:]),
        **mem.as_dict(),
    }
    log(
        f"  {w.name}: train step median {out['median_s']:.3f} s, gradient pass on 2/3 of the batch"
        f" {out['grad_pass_median_s']:.3f} s, train peak {mem.peak / 2**20:.1f} MiB"
    )
    return out


def run_gradinit(
    w: Workload, model: nn.Module, data: Iterable[Batch], hvp: str, kind: str, iters: int, compile: bool = False
) -> hf_gradinit.GradInitResult:
    gamma = OBJECTIVE_GAMMA if kind == "objective" else CONSTRAINT_GAMMA
    settings = {**w.gradinit_config, **HVP_MODES[hvp], "compile": compile}
    config = GradInitConfig(**settings, gamma=gamma, iters=iters, show_progress=False)
    result = gradinit(model, data, config, loss_fn=w.loss_fn)
    kinds = [h["kind"] for h in result.history]
    if len(kinds) != iters or set(kinds) != {kind}:
        raise RuntimeError(f"{w.name} {hvp}: asked for {iters} {kind} steps, got {kinds}")
    return result


def measure_gradinit(
    trainer: Trainer, hvp: str, kind: str, warmup: int, repeats: int, compile: bool = False
) -> dict[str, Any]:
    w, device = trainer.w, trainer.device
    n = warmup + repeats
    train_s: list[float] = []
    pass_s: list[float] = []
    model = w.build_trained()
    sync(device)
    result = run_gradinit(w, model, trainer.interleaved(n, train_s, pass_s), hvp, kind, n, compile)
    seconds = [h["seconds"] for h in result.history]
    del model
    gc.collect()
    model = w.build_trained()
    with PeakMemory(device, (list(model.parameters()), list(model.buffers()), w.batch)) as mem:
        # A compiled run's first iteration compiles; its memory is measured eagerly.
        run_gradinit(w, model, [w.batch] * (warmup + 1), hvp, kind, warmup + 1)
    del model
    out = {
        "hvp": hvp,
        "kind": kind,
        "compile": compile,
        "gamma": OBJECTIVE_GAMMA if kind == "objective" else CONSTRAINT_GAMMA,
        "seconds_all": seconds,
        "seconds": seconds[warmup:],
        "median_s": median(seconds[warmup:]),
        "train_seconds_all": train_s,
        "train_median_s": median(train_s[warmup:]),
        "grad_pass_seconds_all": pass_s,
        "grad_pass_median_s": median(pass_s[warmup:]),
        "history": result.history,
        "memory_iterations": warmup + 1,
        **mem.as_dict(),
    }
    log(
        f"  {w.name}: gradinit hvp={hvp}{' compiled' if compile else ''} {kind}: {out['median_s']:.3f} s/iter (all: "
        f"{', '.join(f'{s:.2f}' for s in seconds)}), interleaved train step {out['train_median_s']:.3f} s,"
        f" peak {mem.peak / 2**20:.1f} MiB"
    )
    return out


def measure_recipe(
    trainer: Trainer, iters: int, recipe_iters: int, recipe_updates: int, compile: bool = False
) -> dict[str, Any]:
    """A whole default GradInit run as the translation recipe runs it, against the training it
    precedes: the paper's 780 iterations (Adam target, eta 1e-3, gamma 1000 on ||g||_1: the
    defaults, so objective and constraint steps mix as they come) on batches 1.5x the training
    batch (split into S and S~ of the training batch's size, as ``--gradinit_batch_size``
    defaults), before ``recipe_updates`` training steps (the recipe's 100k). The GradInit run
    is measured whole (set-up included) when ``iters == recipe_iters``; with fewer iterations
    its set-up plus ``recipe_iters`` times the mean iteration is the projection. The training
    side is always ``recipe_updates`` times the median training step measured in this run."""
    w, device = trainer.w, trainer.device
    big = extend_batch(w.batch, 1.5)
    config = GradInitConfig(target="adam", iters=iters, show_progress=False, compile=compile)
    model = w.build_trained()
    sync(device)
    result = gradinit(model, [big], config, loss_fn=w.loss_fn)
    del model
    gc.collect()
    train_steps = [trainer.step() for _ in range(5)]
    t = result.timings
    seconds = [h["seconds"] for h in result.history]
    # The first iteration carries one-off work (torch.compile compiles then), so it is counted
    # once and the projection repeats the mean of the others.
    mean_iter = statistics.mean(seconds[1:]) if len(seconds) > 1 else seconds[0]
    projected = t["setup_s"] + seconds[0] + mean_iter * (recipe_iters - 1)
    gradinit_s = t["total_s"] if iters == recipe_iters else projected
    train_s = median(train_steps) * recipe_updates
    out = {
        "compile": compile,
        "iterations_run": len(result.history),
        "recipe_iterations": recipe_iters,
        "recipe_updates": recipe_updates,
        "projected": iters != recipe_iters,
        "gradinit_total_s": t["total_s"],
        "gradinit_setup_s": t["setup_s"],
        "gradinit_first_iteration_s": seconds[0],
        "gradinit_mean_iteration_s": mean_iter,
        "constraint_steps": result.num_constraint_steps,
        "gradinit_recipe_s": gradinit_s,
        "train_step_median_s": median(train_steps),
        "train_recipe_s": train_s,
        "fraction": gradinit_s / train_s,
    }
    log(
        f"  {w.name}: recipe run of {len(result.history)} GradInit iterations ({result.num_constraint_steps}"
        f" constraint) {t['total_s']:.1f} s; GradInit for {recipe_iters} iterations {gradinit_s:.1f} s vs"
        f" {recipe_updates} training steps {train_s:.0f} s: {100 * out['fraction']:.2f}%"
    )
    return out


def extend_batch(batch: Batch, factor: float) -> Batch:
    """``batch`` with its first samples appended, ``factor`` times as many samples in all."""
    n = next(iter(tensors_of(batch))).shape[0]
    extra = round(n * factor) - n
    if isinstance(batch, dict):
        return {k: torch.cat([v, v[:extra]]) for k, v in batch.items()}
    return tuple(torch.cat([t, t[:extra]]) for t in batch)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hf_gradinit": hf_gradinit.__version__,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_steal_percent": steal_percent(),
    }
    info.update(git_info())
    return info


def git_info() -> dict[str, Any]:
    """Commit of the checkout and whether ``hf_gradinit/`` differs from it (the engine measured)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "hf_gradinit"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "hf_gradinit_uncommitted_changes": None}
    return {"git_commit": commit, "hf_gradinit_uncommitted_changes": dirty.splitlines()}


def cpu_times() -> list[int] | None:
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


_START_CPU_TIMES = cpu_times()


def steal_percent() -> float | None:
    """Share of CPU time the hypervisor took from this VM since the script started (/proc/stat)."""
    end = cpu_times()
    if _START_CPU_TIMES is None or end is None or len(end) < 8:
        return None
    delta = [b - a for a, b in zip(_START_CPU_TIMES, end, strict=False)]
    return 100.0 * delta[7] / max(1, sum(delta))


def rows(results: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    out = []
    for name, r in results.items():
        train = r["train"]
        for g in r["gradinit"]:
            out.append(
                {
                    "model": name,
                    "device": device.type,
                    "hvp": ("(any)" if g["kind"] == "objective" else g["hvp"])
                    + (" +compile" if g.get("compile") else ""),
                    "dtype": r["description"].get("dtype", "float32"),
                    "kind": g["kind"],
                    "iter_s": g["median_s"],
                    "train_s": g["train_median_s"],
                    "time_ratio": g["median_s"] / g["train_median_s"],
                    "passes": g["median_s"] / g["grad_pass_median_s"],
                    "iter_peak_mib": g["peak_bytes"] / 2**20,
                    "train_peak_mib": train["peak_bytes"] / 2**20,
                    "memory_ratio": g["peak_bytes"] / train["peak_bytes"],
                    "growth_ratio": g["growth_bytes"] / train["growth_bytes"],
                }
            )
    return out


def markdown(table: list[dict[str, Any]]) -> str:
    head = (
        "| model | device | model dtype | hvp | step | s / iter | s / train step | time ratio | iter / pass"
        " | peak MiB iter | peak MiB train | peak-memory ratio |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in table:
        lines.append(
            f"| {r['model']} | {r['device']} | {r['dtype']} | {r['hvp']} | {r['kind']} | {r['iter_s']:.3f}"
            f" | {r['train_s']:.3f}"
            f" | {r['time_ratio']:.2f} | {r['passes']:.2f} | {r['iter_peak_mib']:.0f} | {r['train_peak_mib']:.0f}"
            f" | {r['memory_ratio']:.2f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", nargs="+", choices=MODELS, default=None, help="default: marian cnn (+ marian-iwslt on GPU)"
    )
    parser.add_argument(
        "--hvp",
        nargs="+",
        choices=list(HVP_MODES),
        default=list(HVP_MODES),
        help="constraint-step modes: exact, finite_difference (forward, the default), fd_central;"
        " objective steps are the same in every mode and are measured once",
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="dtype the model trains in")
    parser.add_argument(
        "--compile", action="store_true", help="also measure finite-difference rows with GradInitConfig(compile=True)"
    )
    parser.add_argument(
        "--recipe_iters",
        type=int,
        default=0,
        help="measure a whole default GradInit run of this many iterations on marian-iwslt (or the"
        " first model) against 100k training steps; 780 is the whole recipe, fewer are projected",
    )
    parser.add_argument("--recipe_compile", action="store_true", help="also measure the recipe run compiled")
    parser.add_argument("--repeats", type=int, default=None, help="measured iterations / steps (default 5, quick 2)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="discarded iterations / steps first (default 2, quick 1)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all cores)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--out", type=Path, default=None, help="JSON output, e.g. benchmarks/results/cpu.json")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in well under a minute")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if repeats < 1 or warmup < 0:
        raise SystemExit("--repeats must be >= 1 and --warmup >= 0")
    models = args.models or (list(MODELS) if device.type == "cuda" else ["marian", "cnn"])
    log(
        f"GradInit benchmark on {device} ({torch.get_num_threads()} threads), models {models}, hvp {args.hvp},"
        f" warm-up {warmup}, repeats {repeats}{', quick sizes' if args.quick else ''}"
    )
    results: dict[str, Any] = {}
    for name in models:
        w = make_workload(name, args.quick, device)
        w.dtype = DTYPES[args.dtype]
        w.description["dtype"] = args.dtype
        n_params = sum(p.numel() for p in w.build().parameters() if p.requires_grad)
        log(f"{name}: {n_params / 1e6:.2f}M trainable parameters; {w.description['batch']}")
        entry: dict[str, Any] = {"description": w.description, "trainable_parameters": n_params}
        trainer = Trainer(w, device)
        entry["train"] = measure_training(trainer, warmup, repeats)
        entry["gradinit"] = []
        default_mode = "finite_difference" if "finite_difference" in args.hvp else args.hvp[0]
        for kind in STEP_KINDS:
            for hvp in args.hvp if kind == "constraint" else [default_mode]:
                entry["gradinit"].append(measure_gradinit(trainer, hvp, kind, warmup, repeats))
                if args.compile and hvp == "finite_difference":
                    entry["gradinit"].append(measure_gradinit(trainer, hvp, kind, warmup, repeats, compile=True))
        recipe_model = "marian-iwslt" if "marian-iwslt" in models else models[0]
        if args.recipe_iters > 0 and name == recipe_model:
            entry["recipe"] = [measure_recipe(trainer, args.recipe_iters, 780, 100_000)]
            if args.recipe_compile:
                entry["recipe"].append(measure_recipe(trainer, args.recipe_iters, 780, 100_000, compile=True))
        del trainer
        gc.collect()
        results[name] = entry
    table = rows(results, device)
    wall = time.perf_counter() - started
    report = {
        "command": " ".join(["python", *sys.argv]) if argv is None else " ".join(["python", sys.argv[0], *argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "warmup": warmup,
        "repeats": repeats,
        "wall_s": wall,
        "notes": {
            "time_ratio": "median seconds of the measured GradInit iterations / median seconds of the training"
            " steps interleaved with them (one before each iteration), same batch",
            "iter_per_pass": "GradInit iteration / one forward+autograd.grad on a 2/3-size minibatch in eval mode,"
            " also interleaved",
            "memory_ratio": "peak bytes of a gradinit() call (set-up + warmup+1 iterations) / peak of two train steps",
            "minibatches": "GradInit splits each batch into S and S~, each 2/3 of the batch (overlap 0.5)",
        },
        "table": table,
        "results": results,
    }
    print()
    print(markdown(table))
    for name, r in results.items():
        for rec in r.get("recipe", []):
            print(
                f"\n{name} recipe{' (compiled)' if rec['compile'] else ''}: GradInit {rec['gradinit_recipe_s']:.1f} s"
                f" for {rec['recipe_iterations']} iterations"
                f"{' (projected from ' + str(rec['iterations_run']) + ')' if rec['projected'] else ''},"
                f" training {rec['train_recipe_s']:.0f} s for {rec['recipe_updates']} steps:"
                f" {100 * rec['fraction']:.2f}%"
            )
    print(f"\nwall time {wall:.1f} s")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        log(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
