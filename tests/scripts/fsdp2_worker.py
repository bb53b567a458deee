"""Two gloo processes: every initialiser refuses an FSDP2 (fully_shard) model clearly, and leaves
every rank's shards as they were. Writes rank<r>.pt into the folder given as argv[1]."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

import hf_gradinit as hg


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    mesh = init_device_mesh("cpu", (2,))
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    before = [p.to_local().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(rank)
    data = [(torch.randn(12, 4, generator=g), torch.randint(0, 3, (12,), generator=g)) for _ in range(3)]
    configs = {
        "gradinit": hg.GradInitConfig(target="sgd", eta=0.1, iters=3, show_progress=False),
        "lsuv": hg.LSUVConfig(show_progress=False),
        "metainit": hg.MetaInitConfig(steps=2, show_progress=False),
    }
    errors = {}
    for name, config in configs.items():
        try:
            hg.get_initializer(name).fn(
                model, data, config, loss_fn=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])
            )
            errors[name] = None
        except Exception as err:  # recorded for the test to read
            errors[name] = f"{type(err).__name__}: {err}"
    unchanged = all(torch.equal(a, p.to_local()) for a, p in zip(before, model.parameters(), strict=True))
    torch.save(
        {"is_fsdp": isinstance(model, FSDPModule), "errors": errors, "unchanged": unchanged}, out / f"rank{rank}.pt"
    )
    dist.destroy_process_group()


if __name__ == "__main__":  # pytest imports this file when collecting doctests
    main()
