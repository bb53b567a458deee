"""What the FSDP2 benchmarks share: a free local port, a ``torchrun`` launch of a worker script,
and the MLP they shard one ``fully_shard`` per layer.

Kept import-light (``torch`` only inside the functions that need it) so a benchmark's launcher
process does not pay for it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (a rendezvous port for ``torchrun``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script: str | Path, world: int, args: list[str], **run_kwargs: Any) -> subprocess.CompletedProcess:
    """Run ``script`` with ``args`` under ``torchrun`` on ``world`` local processes, one thread each
    (the benchmarks measure per-process memory and time, not intra-op parallelism)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, **run_kwargs)


def mlp(width: int, layers: int) -> Any:
    """``layers`` blocks of ``Linear(width, width)`` + ReLU, the benchmarks' model."""
    from torch import nn

    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(layers)])


def shard_per_layer(model: Any, device_type: str, world: int) -> None:
    """FSDP2 on a one-dimensional mesh of ``world`` ranks: each block its own unit, then the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = init_device_mesh(device_type, (world,))
    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    assert isinstance(model, FSDPModule)  # not a silent fallback to plain data parallel
