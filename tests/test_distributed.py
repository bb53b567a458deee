"""Two real processes (torchrun, gloo, CPU): GradInit under DDP."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_marian
from test_trainer import reversal_dataset
from transformers import default_data_collator

from hf_gradinit import GradInitConfig, gradinit

WORKER = Path(__file__).parent / "scripts" / "ddp_worker.py"
PLAIN_WORKER = Path(__file__).parent / "scripts" / "plain_dist_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAILURE_WORKER = Path(__file__).parent / "scripts" / "failure_worker.py"


def _torchrun(worker: Path, out: Path, *args: str, timeout: float = 600) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(worker), str(out), *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _torchrun(WORKER, out)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("mode", ["loss", "data"])
def test_a_failure_on_one_rank_reaches_the_other_within_seconds(tmp_path, mode):
    """Rank 1 fails mid-run; rank 0 used to wait in its next all-reduce for the process group's
    timeout (30 minutes by default). Both must raise the same clear error, models restored."""
    _torchrun(FAILURE_WORKER, tmp_path, mode, timeout=240)
    r0, r1 = (torch.load(tmp_path / f"{mode}{r}.pt", weights_only=False) for r in range(2))
    assert r0["restored"] and r1["restored"]
    assert "rank 1" in r1["error"] or "on rank 1" in r1["error"]
    assert r0["error"].startswith("PeerFailure: GradInit failed on rank 1:") and "stopped too" in r0["error"]
    assert ("a bad batch on rank 1" if mode == "loss" else "the data file went away") in r0["error"]
    assert r0["raised_at"] - r1["t"] < 5.0  # seconds, not the process group's timeout


def test_users_own_process_group_is_averaged_over(tmp_path):
    """No accelerate state (plain init_process_group): accelerate's reduce would return its
    input unchanged, and the ranks, on different shards, would learn different scales."""
    _torchrun(PLAIN_WORKER, tmp_path)
    r0, r1 = (torch.load(tmp_path / f"plain{r}.pt", weights_only=False) for r in range(2))
    assert torch.equal(r0["mean"], torch.tensor([1.5, 5.0])) and torch.equal(r1["mean"], r0["mean"])
    assert r0["all"] is False and r1["all"] is False
    assert r0["scales"] == r1["scales"] and any(a != 1.0 for a in r0["scales"].values())
    for name, value in r0["weights"].items():
        assert torch.equal(value, r1["weights"][name]), name


def test_both_ranks_ran_ddp_and_hold_identical_weights(ranks):
    r0, r1 = ranks
    assert r0["world"] == r1["world"] == 2 and r0["wrapped"] == "DistributedDataParallel"
    kinds = {h["kind"] for h in r0["history"]}
    assert kinds == {"constraint", "objective"}, kinds  # both kinds of step were exercised
    assert r0["scales"] == r1["scales"]
    for stage in ("after_init", "after_step"):
        for name, value in r0[stage].items():
            assert torch.equal(value, r1[stage][name]), f"{stage}: {name} differs between ranks"
    moved = [n for n, a in r0["scales"].items() if a != 1.0]
    assert moved


def test_logged_summary_is_the_same_on_every_rank(ranks):
    """What the Trainer logs is reduced across processes: averaged figures, the slowest time."""
    r0, r1 = ranks
    assert r0["logged"] == r1["logged"]
    assert r0["logged"]["gradinit/seconds"] == pytest.approx(max(r0["total_s"], r1["total_s"]))


def test_scales_match_single_process_run_over_the_union_of_shards(ranks):
    """Rebuild each iteration's union of the two ranks' batches from the documented sharding
    (one seeded permutation, rank r takes order[r::2]), run GradInit in one process on it."""
    dataset = reversal_dataset()
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    shards = [order[r::2] for r in range(2)]
    batches = [
        default_data_collator([dataset[i] for i in shards[0][6 * k : 6 * k + 6] + shards[1][6 * k : 6 * k + 6]])
        for k in range(4)
    ]
    config = GradInitConfig.from_dict(ranks[0]["config"])
    reference = gradinit(tiny_marian(seed=0), batches, config)
    assert [h["kind"] for h in reference.history] == [h["kind"] for h in ranks[0]["history"]]
    for h, g in zip(reference.history, ranks[0]["history"], strict=True):
        assert g["grad_norm"] == pytest.approx(h["grad_norm"], rel=1e-5)
    # Same maths; only the order of floating-point sums differs (a mean of two shard means).
    for name, a in reference.scales.items():
        assert ranks[0]["scales"][name] == pytest.approx(a, rel=1e-5, abs=1e-6), name


FSDP2_WORKER = Path(__file__).parent / "scripts" / "fsdp2_worker.py"


@pytest.fixture(scope="module", params=["marian", "gpt2"])
def fsdp2_ranks(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"fsdp2_{request.param}")
    _torchrun(FSDP2_WORKER, out, request.param, timeout=400)
    return [torch.load(out / f"{request.param}_rank{r}.pt", weights_only=False) for r in range(2)]


def test_fsdp2_run_really_is_sharded_and_uneven(fsdp2_ranks):
    """Guards against testing DDP by mistake: the model is an FSDPModule with DTensor
    parameters, and the odd vocabulary gives the two ranks shards of different sizes."""
    r0, r1 = fsdp2_ranks
    assert r0["is_fsdp"] and r1["is_fsdp"] and r0["dtensors"] > 0
    assert any(r0["local_shapes"][n] != r1["local_shapes"][n] for n in r0["local_shapes"])


def test_fsdp2_gradinit_equals_the_unsharded_ddp_run(fsdp2_ranks):
    """Same batches per rank, same config: the sharded run's gradient norms, step kinds, scales
    and full weights equal the unsharded run's (averaged across the ranks as under DDP). The
    tolerance is the finite-difference HVP's: its rounding error is about sqrt(u) relative, and
    the two runs sum in different orders (reduce-scatter against all-reduce)."""
    for r in fsdp2_ranks:
        assert r["kinds"] == r["reference_kinds"] and set(r["kinds"]) == {"constraint", "objective"}
        assert r["grad_norms"] == pytest.approx(r["reference_grad_norms"], rel=1e-5)
        assert r["init_norms"] == pytest.approx(r["reference_init_norms"], rel=1e-12)
        assert set(r["scales"]) == set(r["reference_scales"])
        for name, a in r["reference_scales"].items():
            assert r["scales"][name] == pytest.approx(a, rel=1e-4), name
        assert sum(a != 1.0 for a in r["scales"].values()) == len(r["scales"])
        for name, w in r["reference_weights"].items():
            torch.testing.assert_close(r["weights"][name], w, rtol=1e-4, atol=1e-5, msg=name)
        assert r["grads_left"] == [] and math.isfinite(r["loss_after"])


def test_fsdp2_every_rank_ends_identical(fsdp2_ranks):
    r0, r1 = fsdp2_ranks
    assert r0["scales"] == r1["scales"] and r0["kinds"] == r1["kinds"]
    for name, w in r0["weights"].items():
        assert torch.equal(w, r1["weights"][name]), name


def test_fsdp2_a_failure_on_one_rank_restores_every_rank(fsdp2_ranks):
    for r in fsdp2_ranks:
        assert r["failure"] is not None and r["failure"].startswith("GradInitError")
        assert "restored" in r["failure"]
        assert r["restored"] and math.isfinite(r["loss_after_failure"])


def test_fsdp2_refuses_what_cannot_run_sharded_and_changes_nothing(fsdp2_ranks):
    for r in fsdp2_ranks:
        refused = r["refusals"]
        assert "hvp='exact'" in refused["exact"] and "before sharding" in refused["exact"]
        for name in ("lsuv", "metainit"):
            assert "cannot run on sharded parameters" in refused[name] and "GradInit runs on FSDP2" in refused[name]
        assert "distributed=False" in refused["not_distributed"]
        assert r["unchanged_by_refusals"]


FSDP2_TRAINER_WORKER = Path(__file__).parent / "scripts" / "fsdp2_trainer_worker.py"


def test_gradinit_callback_runs_inside_trainer_on_an_fsdp2_model(tmp_path):
    """The Trainer route under FSDP2. On CPU accelerate turns an FSDP request into DDP, so the
    worker sets accelerate's state by hand (distributed type FSDP, an FSDP2 plugin); the Trainer
    then shards the GPT-2 with accelerate's own fsdp2_prepare_model before on_train_begin.
    GradInit's scales equal those of the same training under plain DDP, and so does training."""
    _torchrun(FSDP2_TRAINER_WORKER, tmp_path, timeout=400)
    r0, r1 = (torch.load(tmp_path / f"trainer_rank{r}.pt", weights_only=False) for r in range(2))
    for r in (r0, r1):
        fsdp, ddp = r["fsdp"], r["ddp"]
        assert fsdp["is_fsdp"] and fsdp["param_type"] == "DTensor" and not ddp["is_fsdp"]
        assert fsdp["kinds"] == ddp["kinds"] and set(fsdp["kinds"]) == {"constraint", "objective"}
        for name, a in ddp["scales"].items():
            assert fsdp["scales"][name] == pytest.approx(a, rel=1e-4), name
        for name, w in ddp["weights_after_training"].items():
            torch.testing.assert_close(fsdp["weights_after_training"][name], w, rtol=1e-4, atol=1e-5, msg=name)
        assert fsdp["losses"] == pytest.approx(ddp["losses"], rel=1e-4)
        assert fsdp["logged"] and fsdp["logged"][0]["gradinit/iterations"] == 5
    assert r0["fsdp"]["scales"] == r1["fsdp"]["scales"]


def test_the_gpu_fsdp2_benchmark_runs_its_plumbing_on_gloo(tmp_path, monkeypatch):
    """benchmarks/bench_fsdp2_gpu.py waits for a lent GPU: check here, on gloo, that it runs end
    to end and that a one-rank FSDP2 mesh learns exactly the unsharded model's scales."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_fsdp2_gpu

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "fsdp2_cpu.json"
    argv = [
        "--device",
        "cpu",
        "--width",
        "64",
        "--layers",
        "2",
        "--iters",
        "3",
        "--worlds",
        "1",
        "2",
        "--out",
        str(out),
    ]
    summary = bench_fsdp2_gpu.main(argv)
    assert summary == json.loads(out.read_text())
    rows = summary["rows"]
    assert [(r["mode"], r["world"], r["rank"]) for r in rows] == [
        ("plain", 1, 0), ("fsdp2", 1, 0), ("fsdp2", 2, 0), ("fsdp2", 2, 1)]  # fmt: skip
    assert {r["backend"] for r in rows} == {"gloo"}
    assert summary["max_scale_diff_vs_unsharded"] < 1e-6
    # the local shard halves at two ranks (64 x 64 weights split by rows; biases too)
    assert rows[2]["local_parameters_mb"] == pytest.approx(rows[1]["local_parameters_mb"] / 2)
    assert rows[2]["constraint_steps"] == rows[3]["constraint_steps"]
    # peak RSS after a warm-up is no measure of GradInit's memory: no ratios are claimed from it
    assert summary["fsdp2_w1_over_unsharded"]["gradinit_peak_growth"] is None
    assert "growth_over_world_1" not in summary


def test_the_gpu_fsdp2_benchmark_says_what_to_do_without_a_gpu():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_fsdp2_gpu

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit, match="--device cpu"):
        bench_fsdp2_gpu.main(["--device", "cuda"])
