"""Run by test_distributed.py under `torchrun --nproc_per_node 2`: the user's own process group
(plain `init_process_group("gloo")`, no accelerate state), as a script without the Trainer has."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from hf_gradinit import GradInitConfig, gradinit
from hf_gradinit.distributed import Collective


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    collective = Collective()
    mean = collective.mean(torch.tensor([float(rank + 1), 10.0 * rank]))
    every = collective.all(rank == 0, torch.device("cpu"))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
    batches = [(torch.randn(6, 4, generator=g), torch.randn(6, 1, generator=g)) for _ in range(3)]
    result = gradinit(
        model,
        batches,
        GradInitConfig(target="sgd", eta=0.1, iters=3, lr=0.05, show_progress=False),
        loss_fn=lambda m, b: F.mse_loss(m(b[0]), b[1]),
    )
    torch.save(
        {
            "mean": mean,
            "all": every,
            "scales": result.scales,
            "weights": {n: p.detach() for n, p in model.named_parameters()},
        },
        Path(out_dir) / f"plain{rank}.pt",
    )
    dist.destroy_process_group()


if __name__ == "__main__":  # pytest imports this file when collecting doctests
    main(sys.argv[1])
