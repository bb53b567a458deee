"""Run by test_distributed.py under `torchrun --nproc_per_node 2`: one rank fails during GradInit
(an exception in its loss, or in its data); both must raise within seconds, each with its model
restored, instead of the healthy rank waiting out the process group's timeout."""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from hf_gradinit import GradInitConfig, GradInitError, gradinit


def main(out_dir: str, mode: str) -> None:
    # A long timeout: without failure sharing the healthy rank would hang far beyond the test's.
    dist.init_process_group("gloo", timeout=timedelta(minutes=10))
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(100 + rank)
    batches = [(torch.randn(6, 4, generator=g), torch.randn(6, 1, generator=g)) for _ in range(3)]
    calls = {"n": 0}
    failed_at = {}

    def loss_fn(m, b):
        calls["n"] += 1
        if mode == "loss" and rank == 1 and calls["n"] == 4:
            failed_at["t"] = time.time()
            raise RuntimeError("a bad batch on rank 1")
        return F.mse_loss(m(b[0]), b[1])

    def data():
        for i, batch in enumerate(batches * 3):
            if mode == "data" and rank == 1 and i == 2:
                failed_at["t"] = time.time()
                raise OSError("the data file went away on rank 1")
            yield batch

    config = GradInitConfig(target="sgd", eta=0.1, iters=5, lr=0.05, show_progress=False)
    started = time.time()
    try:
        gradinit(model, data() if mode == "data" else batches, config, loss_fn=loss_fn)
        error = None
    except (GradInitError, OSError) as err:
        error = f"{type(err).__name__}: {err}"
    restored = all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    record = {"error": error, "restored": restored, "seconds": time.time() - started, **failed_at}
    record["raised_at"] = time.time()
    torch.save(record, Path(out_dir) / f"{mode}{rank}.pt")
    if rank == 1:
        time.sleep(8)  # the failing rank carries on with other work: its socket stays open
    # The process group has a half-done collective now; leave without a collective teardown.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":  # pytest imports this file when collecting doctests
    main(sys.argv[1], sys.argv[2])
