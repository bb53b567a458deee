"""GradInit's own memory per process on an FSDP2 model, at two and four processes (CPU, gloo).

Run by itself: it launches ``torchrun`` for world sizes 2 and 4 and writes
``benchmarks/results/fsdp2_memory_cpu.json``::

    python benchmarks/bench_fsdp2_memory.py

Each process builds the same MLP (8 linear layers 2048x2048, 134 MB of fp32 weights), shards
it with ``fully_shard`` (one group per layer), runs one forward/backward (so FSDP's own
buffers are in the baseline), then GradInit. The figure is the growth of the process's peak
resident memory (``ru_maxrss``) during GradInit: its working state (the copy of theta0, the
gradients, the direction of the finite difference) on top of what a training step needs.
Peak RSS is coarse (the allocator keeps freed pages), so the ratio between world sizes is the
result, not the megabytes; time per iteration is printed beside it.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

from _torchrun import mlp, shard_per_layer, torchrun

OUT = Path(__file__).parent / "results" / "fsdp2_memory_cpu.json"
WIDTH, LAYERS, ITERS = 2048, 8, 6
# One process is left out: FSDP2 on a one-process mesh has no communication buffers at all,
# so it would not be a like-for-like baseline for the sharded runs.
WORLDS = (2, 4)


def worker(out: Path) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn

    import hf_gradinit as hg

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = mlp(WIDTH, LAYERS)
    shard_per_layer(model, "cpu", world)
    g = torch.Generator().manual_seed(rank)
    data = [(torch.randn(48, WIDTH, generator=g), torch.randn(48, WIDTH, generator=g)) for _ in range(2)]

    def loss_fn(m, b):
        return nn.functional.mse_loss(m(b[0]), b[1])

    loss_fn(model, data[0]).backward()  # a training step's memory is the baseline
    for p in model.parameters():
        p.grad = None
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = hg.gradinit(model, data, hg.GradInitConfig(iters=ITERS, eta=1e-3, show_progress=False), loss_fn=loss_fn)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    local = sum(p.to_local().numel() * 4 for p in model.parameters())
    record = {
        "rank": rank,
        "world": world,
        "local_shard_mb": local / 2**20,
        "gradinit_peak_growth_mb": (peak - base) / 1024,
        "seconds_per_iteration": seconds / ITERS,
        "constraint_steps": sum(h["kind"] == "constraint" for h in result.history),
    }
    (out / f"w{world}_r{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


def main() -> None:
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "bench_fsdp2_memory"
    tmp.mkdir(parents=True, exist_ok=True)
    rows = []
    for world in WORLDS:
        torchrun(__file__, world, ["--worker", str(tmp)], check=True)
        rows += [json.loads((tmp / f"w{world}_r{r}.json").read_text()) for r in range(world)]
    growth = {w: max(r["gradinit_peak_growth_mb"] for r in rows if r["world"] == w) for w in WORLDS}
    summary = {
        "command": "python benchmarks/bench_fsdp2_memory.py",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only, gloo",
        "model": f"MLP {LAYERS} x Linear({WIDTH}, {WIDTH}), fp32, fully_shard per layer",
        "iterations": ITERS,
        "rows": rows,
        "growth_ratio_world4_over_world2": growth[4] / growth[2],
    }
    OUT.write_text(json.dumps(summary, indent=1))
    for r in rows:
        print(
            f"world {r['world']} rank {r['rank']}: shard {r['local_shard_mb']:.0f} MB, GradInit peak growth"
            f" {r['gradinit_peak_growth_mb']:.0f} MB, {r['seconds_per_iteration']:.2f} s/iteration"
        )
    print(f"peak growth, 4 processes / 2 processes: {summary['growth_ratio_world4_over_world2']:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]))
    else:
        main()
