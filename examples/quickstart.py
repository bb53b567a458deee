"""GradInit on a small Post-LN Marian translation model, offline, in about a minute on a CPU.

It builds a Post-LayerNorm Marian model from a config (no download), generates a built-in
toy "translation" task (the target is the source sequence reversed: a smoke demo, not a
real language pair), runs GradInit for the optimizer it will train with (Adam, lr 5e-3, no
warmup), prints the learned scales, then trains the model from its default initialisation
and from GradInit's for the same number of steps and prints both loss curves. Nothing here
is tuned to make GradInit look good: read the numbers as they come.

    python examples/quickstart.py            # defaults
    python examples/quickstart.py --steps 300 --lr 1e-2 --hvp exact
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from transformers import MarianConfig, MarianMTModel

from hf_gradinit import GradInitConfig, gradinit


def build_model(seed: int, layers: int, d_model: int, vocab: int) -> MarianMTModel:
    torch.manual_seed(seed)
    config = MarianConfig(
        vocab_size=vocab,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model,
        max_position_embeddings=128,
        activation_function="relu",
        scale_embedding=True,
        dropout=0.1,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return MarianMTModel(config)


def toy_batches(n: int, batch_size: int, length: int, vocab: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        src = torch.randint(3, vocab, (batch_size, length), generator=g)
        out.append({"input_ids": src, "attention_mask": torch.ones_like(src), "labels": src.flip(1)})
    return out


def train(model: MarianMTModel, batches: list[dict], steps: int, lr: float) -> list[float]:
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98))
    losses = []
    for step in range(steps):
        loss = model(**batches[step % len(batches)]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--d_model", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-3, help="training learning rate (no warmup)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per run")
    parser.add_argument("--gradinit_iters", type=int, default=100)
    parser.add_argument("--hvp", choices=["exact", "finite_difference"], default="finite_difference")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    data = toy_batches(64, batch_size=32, length=10, vocab=args.vocab, seed=args.seed)
    baseline = build_model(args.seed, args.layers, args.d_model, args.vocab)
    model = copy.deepcopy(baseline)

    config = GradInitConfig(target="adam", eta=args.lr, iters=args.gradinit_iters, lr=1e-2, hvp=args.hvp)
    started = time.perf_counter()
    result = gradinit(model, data, config)
    print(result.summary(max_rows=12))
    print(f"GradInit took {time.perf_counter() - started:.1f}s\n")

    curves = {}
    for name, m in (("default", baseline), ("gradinit", model)):
        started = time.perf_counter()
        curves[name] = train(m, data, args.steps, args.lr)
        print(f"trained {name:>8} for {args.steps} steps in {time.perf_counter() - started:.1f}s")
    print(f"\nAdam lr {args.lr}, no warmup; mean training loss over windows of {max(1, args.steps // 10)} steps")
    print(f"{'steps':>10}  {'default':>8}  {'gradinit':>8}")
    window = max(1, args.steps // 10)
    for start in range(0, args.steps, window):
        d = sum(curves["default"][start : start + window]) / len(curves["default"][start : start + window])
        g = sum(curves["gradinit"][start : start + window]) / len(curves["gradinit"][start : start + window])
        print(f"{start:>4}-{start + window - 1:<5}  {d:>8.3f}  {g:>8.3f}")


if __name__ == "__main__":
    main()
