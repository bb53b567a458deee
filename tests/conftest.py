"""Shared helpers: tiny models and data that need no download."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
from torch import nn

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def one_thread():
    """torch on one thread for the test. Tiny models run as fast on one thread as on two, and
    are then immune to oversubscription when another job shares the two cores (OpenMP
    spin-waits made a 32x32 matmul 1000x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_marian(seed: int = 0, layers: int = 2, d_model: int = 32, vocab: int = 48, dropout: float = 0.1, **kwargs):
    """A Post-LN Marian seq2seq model from a config (shared, tied embeddings; frozen
    sinusoidal positions), initialised by transformers' own N(0, 0.02) scheme."""
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(seed)
    config = MarianConfig(
        vocab_size=vocab,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model,
        max_position_embeddings=64,
        activation_function="relu",
        scale_embedding=True,
        dropout=dropout,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        **kwargs,
    )
    return MarianMTModel(config)


def reversal_batches(n: int, batch_size: int = 12, length: int = 8, vocab: int = 48, seed: int = 0) -> list[dict]:
    """A toy translation task: the target is the source reversed."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        src = torch.randint(3, vocab, (batch_size, length), generator=g)
        batches.append({"input_ids": src, "attention_mask": torch.ones_like(src), "labels": src.flip(1)})
    return batches


class SmallCNN(nn.Module):
    """Conv + BatchNorm + dropout + linear head; returns a loss when labels are given."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, stride=2),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.5),
        )
        self.head = nn.Linear(8, classes)

    def forward(self, pixel_values, labels=None):
        logits = self.head(self.features(pixel_values))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def image_batches(n: int, batch_size: int = 12, classes: int = 4, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "pixel_values": torch.randn(batch_size, 3, 8, 8, generator=g),
            "labels": torch.randint(0, classes, (batch_size,), generator=g),
        }
        for _ in range(n)
    ]


def smooth_mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    """tanh MLP (smooth, so finite differences are meaningful), with non-zero biases."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.LayerNorm(7), nn.Linear(7, 3)).to(dtype)
    with torch.no_grad():
        model[2].weight.uniform_(0.5, 1.5)
        model[2].bias.uniform_(-0.5, 0.5)
    return model


def mlp_batches(n: int, batch_size: int = 12, seed: int = 0, dtype: torch.dtype = torch.float64) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch_size, 5, generator=g).to(dtype), torch.randint(0, 3, (batch_size,), generator=g))
        for _ in range(n)
    ]


def xent(model: nn.Module, batch: tuple) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, cloned, by name (aliases included)."""
    state = {f"p:{n}": p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
    state.update({f"b:{n}": b.detach().clone() for n, b in model.named_buffers(remove_duplicate=False)})
    return state


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = snapshot(model)
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert after[name].dtype == value.dtype, name
        assert torch.equal(after[name], value), f"{name} changed"


@pytest.fixture
def quiet():
    """A config factory with the progress bar off."""
    from hf_gradinit import GradInitConfig

    def make(**kwargs):
        kwargs.setdefault("show_progress", False)
        return GradInitConfig(**kwargs)

    return make


def run_script_main(script: Path, argv: list[str], heavy: tuple[str, ...]) -> tuple[str, list[str] | None]:
    """Run ``script``'s ``main()`` with ``argv`` in a fresh interpreter; return its output and
    which of the ``heavy`` modules it had imported by the time it returned or exited (``None``
    if it never got there)."""
    import json
    import subprocess
    import sys

    code = (
        f"import json, sys; sys.argv = [{script.name!r}, *{argv!r}]\n"
        f"sys.path.insert(0, {str(script.parent)!r})\n"
        f"try:\n    import {script.stem}; {script.stem}.main()\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY', json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    found = [line[len("HEAVY ") :] for line in done.stdout.splitlines() if line.startswith("HEAVY ")]
    return done.stdout + done.stderr, json.loads(found[-1]) if found else None
