"""GradInit on an FSDP2 model against the same model unsharded: memory and time per rank, and
whether the learned scales agree. Made for a GPU (NCCL, ``torch.cuda.max_memory_allocated``);
``--device cpu`` runs the same plumbing on gloo (peak RSS, coarse) to check it without one.

Run by itself: it launches ``torchrun`` once for the unsharded model (one process) and once per
world size for the sharded one (one process per GPU; a machine with one GPU gets a one-rank
FSDP2 mesh, which still goes through DTensor parameters, sharded gradients and NCCL), and
writes ``benchmarks/results/gpu_fsdp2/fsdp2_<device>.json``::

    python benchmarks/bench_fsdp2_gpu.py                 # every GPU of the machine
    python benchmarks/bench_fsdp2_gpu.py --device cpu --width 256 --worlds 1 2   # plumbing, gloo

Each process builds the same MLP (``--layers`` Linear(width, width) + ReLU, fp32), shards it with
``fully_shard`` (one group per layer, then the root), runs one forward/backward so a training
step's memory is the baseline, drops the gradients, runs GradInit for two iterations as a
warm-up, puts the weights back and runs it again (``--iters`` iterations, the Adam target). The
memory figure is the growth of the peak during that run over what the model held before it: on
CUDA, ``max_memory_allocated`` after ``reset_peak_memory_stats`` (exact, the allocator's own
count), with its ratios between runs; on CPU, ``ru_maxrss`` (the process's peak pages, which the
warm-up has already raised: plumbing only, no ratios).
With one rank, the sharded run sees the unsharded run's batches, so its scales must equal the
unsharded ones to float32 tolerance (``max_scale_diff_vs_unsharded``); with more ranks each rank
has its own batches (the data-parallel run), and the tests (``tests/test_distributed.py``) check
the agreement against DDP instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

OUT_DIR = Path(__file__).parent / "results" / "gpu_fsdp2"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # hf_gradinit on a machine it is not installed on

from _torchrun import mlp, shard_per_layer, torchrun  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn

    import hf_gradinit as hg

    cuda = args.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    model = mlp(args.width, args.layers).to(device)
    if args.mode == "fsdp2":
        shard_per_layer(model, device.type, world)
    g = torch.Generator().manual_seed(rank)
    data = [
        (
            torch.randn(args.batch, args.width, generator=g).to(device),
            torch.randn(args.batch, args.width, generator=g).to(device),
        )
        for _ in range(2)
    ]

    def loss_fn(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return nn.functional.mse_loss(m(b[0]), b[1])

    loss_fn(model, data[0]).backward()  # a training step's memory is the baseline
    for p in model.parameters():
        p.grad = None
    config = hg.GradInitConfig(target="adam", iters=args.iters, eta=1e-3, show_progress=False)
    # A short warm-up run first (kernel selection, lazy initialisation of FSDP and of the
    # collectives), then the model's weights put back, so the timed run starts from the same init.
    saved = [p.detach().clone() for p in model.parameters()]
    hg.gradinit(model, data, hg.GradInitConfig(target="adam", iters=2, eta=1e-3, show_progress=False), loss_fn=loss_fn)
    with torch.no_grad():
        for p, s in zip(model.parameters(), saved, strict=True):
            p.copy_(s)
    del saved
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    result = hg.gradinit(model, data, config, loss_fn=loss_fn)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params = list(model.parameters())
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() * p.element_size() for p in params)
    record = {
        "mode": args.mode,
        "rank": rank,
        "world": world,
        "backend": dist.get_backend(),
        "local_parameters_mb": local / 2**20,
        "gradinit_peak_growth_mb": (peak - base) / 2**20,
        "memory_counter": "torch.cuda.max_memory_allocated" if cuda else "ru_maxrss",
        "seconds_per_iteration": seconds / args.iters,
        "constraint_steps": sum(h["kind"] == "constraint" for h in result.history),
        "scales": result.scales,
    }
    Path(args.worker_out).joinpath(f"{args.mode}_w{world}_r{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


def launch(args: argparse.Namespace, mode: str, world: int, tmp: Path) -> list[dict]:
    done = torchrun(__file__, world, ["--worker_out", str(tmp), "--mode", mode, "--device", args.device,
                                      "--width", str(args.width), "--layers", str(args.layers),
                                      "--iters", str(args.iters), "--batch", str(args.batch)])  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"bench_fsdp2_gpu.py: the {mode} run at {world} rank(s) failed:\n{done.stderr[-3000:]}")
    return [json.loads((tmp / f"{mode}_w{world}_r{r}.json").read_text()) for r in range(world)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--worlds", type=int, nargs="*", default=None,
                        help="ranks of the sharded runs (default: 1 and the powers of two up to the GPUs)")  # fmt: skip
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker_out", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("plain", "fsdp2"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_out is not None:
        worker(args)
        return {}
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_fsdp2_gpu.py: no CUDA device here; --device cpu runs the same plumbing on gloo.")
    gpus = torch.cuda.device_count() if args.device == "cuda" else 2
    worlds = args.worlds or [w for w in (1, 2, 4, 8) if w <= gpus]
    if args.device == "cuda" and max(worlds) > gpus:
        raise SystemExit(f"bench_fsdp2_gpu.py: --worlds {max(worlds)} needs that many GPUs; this machine has {gpus}.")
    out = args.out or OUT_DIR / f"fsdp2_{args.device}.json"
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_fsdp2_gpu_{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    started = time.time()
    plain = launch(args, "plain", 1, tmp)[0]
    rows = [plain]
    for world in worlds:
        rows += launch(args, "fsdp2", world, tmp)
    one = next((r for r in rows if r["mode"] == "fsdp2" and r["world"] == 1), None)
    summary: dict = {
        "command": "python benchmarks/bench_fsdp2_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(args.device),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "wall_time_s": round(time.time() - started, 1),
        "model": f"MLP {args.layers} x Linear({args.width}, {args.width}) + ReLU, fp32, fully_shard per layer",
        "iterations": args.iters,
        "batch": args.batch,
        "rows": [{k: v for k, v in r.items() if k != "scales"} for r in rows],
    }
    exact = args.device == "cuda"  # peak RSS after a warm-up says nothing about GradInit's share
    if one is not None:
        summary["max_scale_diff_vs_unsharded"] = max(
            abs(one["scales"][k] - plain["scales"][k]) for k in plain["scales"]
        )
        summary["fsdp2_w1_over_unsharded"] = {
            "seconds_per_iteration": one["seconds_per_iteration"] / plain["seconds_per_iteration"],
            "gradinit_peak_growth": one["gradinit_peak_growth_mb"] / plain["gradinit_peak_growth_mb"]
            if exact
            else None,
        }
    growth = {
        w: max(r["gradinit_peak_growth_mb"] for r in rows if r["mode"] == "fsdp2" and r["world"] == w) for w in worlds
    }
    if len(worlds) > 1 and exact:
        summary["growth_over_world_1"] = {str(w): growth[w] / max(growth[worlds[0]], 1e-9) for w in worlds[1:]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    for r in summary["rows"]:
        print(f"{r['mode']:6s} world {r['world']} rank {r['rank']}: parameters {r['local_parameters_mb']:.0f} MB, "
              f"GradInit peak growth {r['gradinit_peak_growth_mb']:.0f} MB ({r['memory_counter']}), "
              f"{r['seconds_per_iteration'] * 1e3:.1f} ms/iteration")  # fmt: skip
    for key in ("max_scale_diff_vs_unsharded", "fsdp2_w1_over_unsharded", "growth_over_world_1"):
        if key in summary:
            print(f"{key}: {summary[key]}")
    print(f"wrote {out}")
    return summary


def machine(device: str) -> str:
    import torch

    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    if device == "cuda":
        return f"{cpu}, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}, nccl"
    return f"{cpu}, CPU only, torch {torch.__version__}, gloo"


if __name__ == "__main__":
    main()
