"""Two gloo processes: GradInit on an FSDP2 (fully_shard) model against the unsharded DDP run.

``fsdp2_worker.py OUT FAMILY`` with FAMILY ``marian`` (tied embeddings) or ``gpt2`` writes
``OUT/<family>_rank<r>.pt``: the scales and full weights of GradInit run (a) on an unsharded
copy of the model, averaging across the two processes as under DDP, and (b) on the same model
sharded by ``fully_shard``, on the same per-rank batches; then what a failure on rank 1 left in
every rank's shards, and the refusals of settings that cannot run sharded.
"""

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

import hf_gradinit as hg


def build(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "marian":
        sys.path.insert(0, str(Path(__file__).parents[1]))
        from conftest import tiny_marian

        # An odd vocabulary: the embedding rows split 25/24, so the shards are uneven.
        return tiny_marian(seed=0, vocab=49, dropout=0.1)
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=51, n_embd=32, n_layer=2, n_head=4, n_positions=37, tie_word_embeddings=True)
    return GPT2LMHeadModel(config)


def batches(family: str, rank: int, n: int = 4) -> list[dict]:
    g = torch.Generator().manual_seed(100 + rank)
    vocab = 49 if family == "marian" else 51
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (6, 9), generator=g)
        mask = torch.ones_like(ids)
        mask[:2, -3:] = 0  # some padding
        if family == "marian":
            labels = ids.flip(1).clone()
            labels[:2, :3] = -100
        else:
            labels = ids.masked_fill(mask == 0, -100)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def shard(model: torch.nn.Module, family: str, mesh) -> torch.nn.Module:
    layers = (
        [*model.model.encoder.layers, *model.model.decoder.layers] if family == "marian" else list(model.transformer.h)
    )
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the root holds the tied embeddings
    return model


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        out[name] = (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
    return out


def main() -> None:
    out, family = Path(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (2,))
    data = batches(family, rank)

    model = build(family)
    probe = hg.gradinit(copy.deepcopy(model), data, hg.GradInitConfig(iters=1, show_progress=False))
    # Just under the first gradient norm: the run starts with constraint steps and, once the
    # norm is below gamma, takes objective steps, so both kinds are compared.
    gamma = 0.97 * probe.history[0]["grad_norm"]
    config = hg.GradInitConfig(iters=6, gamma=gamma, lr=5e-2, eta=1e-2, show_progress=False)

    reference = copy.deepcopy(model)
    ref = hg.gradinit(reference, data, config)

    sharded = shard(model, family, mesh)
    local_shapes = {n: tuple(p.to_local().shape) for n, p in sharded.named_parameters()}
    result = hg.gradinit(sharded, data, config)
    record = {
        "is_fsdp": isinstance(sharded, FSDPModule),
        "dtensors": len(hg.sharding.sharded_parameter_names(sharded)),
        "local_shapes": local_shapes,
        "scales": result.scales,
        "reference_scales": ref.scales,
        "init_norms": result.init_norms,
        "reference_init_norms": ref.init_norms,
        "kinds": [h["kind"] for h in result.history],
        "reference_kinds": [h["kind"] for h in ref.history],
        "grad_norms": [h["grad_norm"] for h in result.history],
        "reference_grad_norms": [h["grad_norm"] for h in ref.history],
        "weights": full_weights(sharded),
        "reference_weights": full_weights(reference),
        "grads_left": [n for n, p in sharded.named_parameters() if p.grad is not None],
    }
    # The sharded model still trains: one forward/backward after GradInit.
    loss = sharded(**data[0]).loss
    loss.backward()
    record["loss_after"] = float(loss)

    # A failure on rank 1 at iteration 3 restores every rank's shards bit for bit.
    failing = shard(build(family), family, mesh)
    before = [p.to_local().clone() for p in failing.parameters()]
    calls = {"n": 0}

    def loss_fn(m, batch):
        calls["n"] += 1
        loss = m(**batch).loss
        return loss * float("nan") if rank == 1 and calls["n"] > 5 else loss

    try:
        hg.gradinit(failing, data, config, loss_fn=loss_fn)
        record["failure"] = None
    except hg.GradInitError as err:
        record["failure"] = f"{type(err).__name__}: {err}"
    record["restored"] = all(torch.equal(a, p.to_local()) for a, p in zip(before, failing.parameters(), strict=True))
    # After the failure the model still runs (shards and FSDP state usable).
    record["loss_after_failure"] = float(failing(**data[0]).loss)

    refusals = {}
    bad = {
        "exact": lambda: hg.gradinit(failing, data, hg.GradInitConfig(iters=1, hvp="exact", show_progress=False)),
        "lsuv": lambda: hg.lsuv(failing, data, hg.LSUVConfig(show_progress=False)),
        "metainit": lambda: hg.metainit(failing, data, hg.MetaInitConfig(steps=1, show_progress=False)),
        "not_distributed": lambda: hg.gradinit(failing, data, config, distributed=False),
    }
    for name, call in bad.items():
        try:
            call()
            refusals[name] = None
        except hg.GradInitError as err:
            refusals[name] = str(err)
    record["refusals"] = refusals
    hg.sharding.reshard(failing)  # the forward above left the root unsharded
    record["unchanged_by_refusals"] = all(
        torch.equal(a, p.to_local()) for a, p in zip(before, failing.parameters(), strict=True)
    )
    torch.save(record, out / f"{family}_rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":  # pytest imports this file when collecting doctests
    main()
