"""LSUV through its public API: unit output variance, execution order, HF models, safety."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import SmallCNN, assert_same_state, image_batches, reversal_batches, snapshot, tiny_marian
from torch import nn

from hf_gradinit import GradInitError, LSUVConfig, LSUVResult, get_initializer, lsuv
from hf_gradinit.methods.lsuv import orthonormal_

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(**kwargs) -> LSUVConfig:
    kwargs.setdefault("show_progress", False)
    return LSUVConfig(**kwargs)


def output_stds(model: nn.Module, batch, names: list[str]) -> dict[str, float]:
    """Each named module's output std at its first call, measured independently of LSUV."""
    modules = dict(model.named_modules())
    out: dict[str, float] = {}

    def hook(name):
        def record(module, args, output):
            out.setdefault(name, float(output.detach().double().std()))

        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    with torch.no_grad():
        model(**batch) if isinstance(batch, dict) else model(batch)
    for h in handles:
        h.remove()
    return out


class DeepMLP(nn.Module):
    def __init__(self, width: int = 24, depth: int = 6):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(width, width) for _ in range(depth)])
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x)


class Shuffled(nn.Module):
    """Registered a, b, c; run c -> a -> b. ReLU and no biases, so a layer's output std is
    exactly proportional to the scale of every layer before it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16, bias=False)
        self.b = nn.Linear(16, 4, bias=False)
        self.c = nn.Linear(8, 16, bias=False)
        with torch.no_grad():
            self.c.weight.mul_(5.0)  # far off unit variance, so processing c moves a and b

    def forward(self, x):
        return self.b(torch.relu(self.a(torch.relu(self.c(x)))))


# --- the method ----------------------------------------------------------------------------
def test_every_processed_layer_reaches_unit_std():
    torch.manual_seed(0)
    model = DeepMLP()
    batch = torch.randn(128, 24)
    before = output_stds(model, batch, [f"layers.{i}" for i in range(6)] + ["head"])
    result = lsuv(model, [batch], quiet())
    names = [r["layer"] for r in result.layers]
    assert names == [f"layers.{i}" for i in range(6)] + ["head"]
    measured = output_stds(model, batch, names)
    for record in result.layers:
        assert abs(measured[record["layer"]] - 1.0) <= 0.1, record
        assert record["std_after"] == pytest.approx(measured[record["layer"]], rel=1e-6)
        assert record["converged"] and record["tries"] <= 10
        assert record["std_init"] == pytest.approx(before[record["layer"]], rel=1e-6)
    # It did something: the default init is far from unit variance deep in the net.
    assert min(before.values()) < 0.5
    # Orthonormal pre-initialisation: rows of every square weight orthogonal, of equal norm.
    for layer in model.layers:
        w = layer.weight.detach().double()
        gram = w @ w.T
        torch.testing.assert_close(gram, gram[0, 0] * torch.eye(24, dtype=torch.float64), atol=1e-5, rtol=1e-5)
        assert float(layer.bias.detach().abs().max()) == 0.0


def test_tighter_tolerance_takes_more_tries():
    torch.manual_seed(0)
    batch = torch.randn(64, 24)
    loose = lsuv(DeepMLP(), [batch], quiet(orthonormal=False, tol=0.3))
    torch.manual_seed(0)
    tight = lsuv(DeepMLP(), [batch], quiet(orthonormal=False, tol=1e-4, max_tries=20))
    assert all(abs(r["std_after"] - 1.0) <= 1e-4 for r in tight.layers)
    assert sum(r["tries"] for r in tight.layers) > sum(r["tries"] for r in loose.layers)


def test_cap_on_tries_reports_layers_that_did_not_converge():
    torch.manual_seed(0)
    model = DeepMLP()
    with torch.no_grad():
        # The spread of the bias alone (std 3) keeps the output std above 1.1 at any weight scale.
        model.layers[0].bias.copy_(3.0 * torch.randn(24))
    result = lsuv(model, [torch.randn(64, 24)], quiet(orthonormal=False, max_tries=2))
    first = result.layers[0]
    assert first["tries"] == 2 and not first["converged"] and first["std_after"] > 1.1
    assert all(r["converged"] for r in result.layers[1:])
    assert result.metrics()["lsuv/not_converged"] == 1.0
    assert result.summary().count("  !") == 1


def test_follows_execution_order_not_registration_order():
    torch.manual_seed(0)
    model = Shuffled()
    batch = torch.randn(64, 8)
    result = lsuv(model, [batch], quiet(orthonormal=False))
    assert [r["layer"] for r in result.layers] == ["c", "a", "b"]
    assert [r["index"] for r in result.layers] == [0, 1, 2]
    measured = output_stds(model, batch, ["a", "b", "c"])
    assert all(abs(s - 1.0) <= 0.1 for s in measured.values()), measured

    # Registration order (a, b, then c: one layer per call) leaves a and b off target,
    # which is why the order matters.
    torch.manual_seed(0)
    naive = Shuffled()
    for name in ("a", "b", "c"):
        others = tuple(f"^{n}\\." for n in "abc" if n != name)
        lsuv(naive, [batch], quiet(orthonormal=False, exclude=others))
    measured = output_stds(naive, batch, ["a", "b", "c"])
    assert abs(measured["c"] - 1.0) <= 0.1
    assert abs(measured["a"] - 1.0) > 0.5, measured


def test_orthonormal_is_qr_of_a_gaussian_and_seeded():
    for shape in [(3, 5), (5, 3), (4, 2, 3, 3)]:
        w = orthonormal_(torch.empty(shape), torch.Generator().manual_seed(0))
        flat = w.reshape(shape[0], -1).double()
        small = min(flat.shape)
        gram = flat @ flat.T if flat.shape[0] == small else flat.T @ flat
        torch.testing.assert_close(gram, torch.eye(small, dtype=torch.float64), atol=1e-6, rtol=0)
        again = orthonormal_(torch.empty(shape), torch.Generator().manual_seed(0))
        assert torch.equal(w, again)
        assert not torch.equal(w, orthonormal_(torch.empty(shape), torch.Generator().manual_seed(1)))


# --- Hugging Face models -------------------------------------------------------------------
def test_tiny_marian_keyword_inputs():
    model = tiny_marian(seed=0)
    before = snapshot(model)
    modes = {n: m.training for n, m in model.named_modules()}
    attention = model.config._attn_implementation
    batch = reversal_batches(1)[0]
    result = lsuv(model, [batch], quiet())
    # Modes and the attention setting are as they were (dropout was off during the pass).
    assert {n: m.training for n, m in model.named_modules()} == modes and model.training
    assert model.config._attn_implementation == attention

    names = [r["layer"] for r in result.layers]
    # Every linear layer of both stacks, in the order the forward pass ran them: Marian
    # registers k_proj, v_proj, q_proj but runs q_proj first.
    registration = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n in names]
    assert names != registration and sorted(names) == sorted(registration)
    assert names.index("model.encoder.layers.0.self_attn.q_proj") < names.index(
        "model.encoder.layers.0.self_attn.k_proj"
    )
    assert names.index("model.encoder.layers.1.fc2") < names.index("model.decoder.layers.0.self_attn.q_proj")
    assert len(names) == 2 * 6 + 2 * 10
    # Each processed layer's output std on the batch, measured afresh in eval mode.
    model.eval()
    measured = output_stds(model, batch, names)
    for record in result.layers:
        assert abs(measured[record["layer"]] - 1.0) <= 0.1, record
    # The head is tied to the input embedding, which runs first: left alone, and still tied.
    assert "tied weight" in result.skipped["lm_head"]
    assert model.lm_head.weight is model.model.shared.weight
    for name in ("model.shared.weight", "model.encoder.embed_positions.weight"):
        assert torch.equal(dict(model.named_parameters())[name], before[f"p:{name}"]), name
    assert set(result.tensors) == {f"{n}.weight" for n in names} | {f"{n}.bias" for n in names}


@pytest.mark.parametrize("family", ["bert", "gpt2", "bart"])
def test_other_hf_families(family):
    """Encoder-only (BERT), transformers' Conv1D (GPT-2), BART: all keyword-input models."""
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        BertConfig,
        BertForMaskedLM,
        GPT2Config,
        GPT2LMHeadModel,
    )

    torch.manual_seed(0)
    small = dict(vocab_size=48, max_position_embeddings=32)
    if family == "bert":
        model = BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=64, **small))  # fmt: skip
        expected = 2 * 6 + 1
    elif family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=48, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                           bos_token_id=1, eos_token_id=1))  # fmt: skip
        expected = 2 * 4
    else:
        model = BartForConditionalGeneration(BartConfig(d_model=32, encoder_layers=1, decoder_layers=1,
                                                        encoder_attention_heads=4, decoder_attention_heads=4,
                                                        encoder_ffn_dim=64, decoder_ffn_dim=64, **small))  # fmt: skip
        expected = 6 + 10
    ids = torch.randint(3, 48, (8, 10), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    result = lsuv(model, [batch], quiet())
    assert len(result.layers) == expected
    assert all(abs(r["std_after"] - 1.0) <= 0.1 for r in result.layers)
    assert len(result.skipped) == 1 and "tied weight" in next(iter(result.skipped.values()))


def test_batchnorm_cnn_uses_batch_statistics_and_keeps_running_stats():
    torch.manual_seed(0)
    model = SmallCNN()
    running = {n: b.clone() for n, b in model.named_buffers()}
    batch = image_batches(1, batch_size=16)[0]
    result = lsuv(model, [batch], quiet())
    assert [r["layer"] for r in result.layers] == ["features.0", "features.3", "head"]
    assert all(abs(r["std_after"] - 1.0) <= 0.1 for r in result.layers)
    for n, b in model.named_buffers():
        assert torch.equal(b, running[n]), n
    assert model.training


# --- tied, frozen, zero, excluded ------------------------------------------------------------
class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(8, 8)
        self.second = nn.Linear(8, 8)
        self.second.weight = self.first.weight  # one Parameter, two layers
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.dead = nn.Linear(8, 8)
        self.unused = nn.Linear(8, 8)
        self.kept = nn.Linear(8, 8)

    def forward(self, x):
        x = torch.tanh(self.first(x))
        x = torch.tanh(self.second(x))
        x = self.frozen(x)
        zero = self.dead(torch.zeros_like(x)) * 0.0  # output std 0
        return self.kept(x + zero)


def test_tied_frozen_zero_and_excluded_layers():
    torch.manual_seed(0)
    model = Mixed()
    before = snapshot(model)
    result = lsuv(model, [torch.randn(32, 8)], quiet(exclude=(r"^kept\.",)))
    assert [r["layer"] for r in result.layers] == ["first"]
    assert result.skipped["second"].startswith("shared weight: already processed at 'first'")
    assert result.skipped["frozen"] == "frozen weight"
    assert result.skipped["dead"].startswith("output std is 0")
    assert result.skipped["unused"] == "not executed on the batch"
    assert result.skipped["kept"] == "excluded"
    after = snapshot(model)
    for name in (
        "frozen.weight",
        "frozen.bias",
        "kept.weight",
        "kept.bias",
        "unused.weight",
        "dead.weight",
        "dead.bias",
    ):
        assert torch.equal(after[f"p:{name}"], before[f"p:{name}"]), name
    assert model.second.weight is model.first.weight
    assert set(result.tensors) == {"first.weight", "first.bias"}  # the dead layer got its weights back
    assert "skipped: 1 x frozen weight" in result.summary()


# --- result: save, load, re-apply ----------------------------------------------------------
def test_reapply_in_memory_and_from_disk_is_bit_exact(tmp_path):
    model = tiny_marian(seed=3)
    result = lsuv(model, reversal_batches(1, seed=3), quiet())
    path = result.save(tmp_path / "init_scales.json")
    assert (tmp_path / "init_scales.safetensors").is_file()
    loaded = LSUVResult.load(path)
    assert loaded.layers == result.layers and loaded.skipped == result.skipped
    spec = get_initializer("lsuv")
    for again in (result, spec.load_result(str(path))):
        fresh = tiny_marian(seed=3)
        spec.reapply(fresh, again)
        for (n, p), q in zip(model.named_parameters(), fresh.parameters(), strict=True):
            assert torch.equal(p, q), n
    metrics = result.metrics(prefix="lsuv/")
    assert metrics["lsuv/layers"] == 32.0 and metrics["lsuv/skipped"] == 1.0
    assert 0.9 <= metrics["lsuv/std_after_min"] <= metrics["lsuv/std_after_max"] <= 1.1
    assert len(result.summary(max_rows=5).splitlines()) == 2 + 5 + 2


def test_load_rejects_other_files(tmp_path):
    (tmp_path / "x.json").write_text('{"format_version": 1, "scales": {}}')
    with pytest.raises(ValueError, match=r"written by the initialiser 'gradinit', not 'lsuv'"):
        LSUVResult.load(tmp_path / "x.json")
    result = lsuv(DeepMLP(depth=1), [torch.randn(8, 24)], quiet())
    result.save(tmp_path / "r.json")
    (tmp_path / "r.safetensors").unlink()
    with pytest.raises(ValueError, match="tensors"):
        LSUVResult.load(tmp_path / "r.json")
    with pytest.raises(KeyError, match="not parameters"):
        result.apply(nn.Linear(2, 2))


def test_half_precision_model_keeps_its_dtype_and_reapplies():
    torch.manual_seed(0)
    model = DeepMLP(depth=2).to(torch.bfloat16)
    result = lsuv(model, [torch.randn(64, 24, dtype=torch.bfloat16)], quiet())
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(t.dtype == torch.bfloat16 for t in result.tensors.values())
    fresh = result.apply(DeepMLP(depth=2).to(torch.bfloat16))
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)


# --- failure safety and bad input ----------------------------------------------------------
class FailsOnCall(DeepMLP):
    def __init__(self, fail_at: int, nan: bool = False):
        super().__init__(depth=3)
        self.calls, self.fail_at, self.nan = 0, fail_at, nan

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            if self.nan:
                x = x * float("nan")
            else:
                raise RuntimeError("boom")
        return super().forward(x)


@pytest.mark.parametrize("nan", [False, True])
def test_failure_mid_run_restores_model_modes_and_rng_exactly(nan):
    torch.manual_seed(0)
    model = FailsOnCall(fail_at=4, nan=nan)
    model.layers[1].eval()  # a mixed mode, to check modes come back as they were
    batch = torch.randn(16, 24)
    before = snapshot(model)
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    with pytest.raises(GradInitError, match="restored") as info:
        lsuv(model, [batch], quiet())
    assert ("boom" in str(info.value)) != nan
    assert model.calls == 4  # it failed after weights had been changed
    assert_same_state(model, before)
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)


def test_rng_is_seeded_inside_and_restored_outside():
    batch = torch.ones(8, 24).cumsum(0)
    models = [DeepMLP(depth=2) for _ in range(3)]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    a = lsuv(models[0], [batch], quiet(seed=5))
    assert torch.equal(torch.get_rng_state(), rng)
    b = lsuv(models[1], [batch], quiet(seed=5))
    c = lsuv(models[2], [batch], quiet(seed=6))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(a.tensors[n], b.tensors[n]) for n in a.tensors)
    assert not torch.equal(a.tensors["layers.0.weight"], c.tensors["layers.0.weight"])


def test_bad_input_is_refused_before_any_work():
    model = DeepMLP(depth=1)
    before = snapshot(model)
    with pytest.raises(GradInitError, match=r"nn\.Module"):
        lsuv("model", [torch.randn(4, 24)], quiet())
    with pytest.raises(GradInitError, match="LSUVConfig"):
        lsuv(model, [torch.randn(4, 24)], {"tol": 0.1})
    with pytest.raises(GradInitError, match="no trainable weight in a layer"):
        lsuv(nn.Sequential(nn.LayerNorm(4)), [torch.randn(4, 4)], quiet())
    frozen = copy.deepcopy(model).requires_grad_(False)
    with pytest.raises(GradInitError, match="frozen"):
        lsuv(frozen, [torch.randn(4, 24)], quiet())
    with pytest.raises(GradInitError, match="no batch"):
        lsuv(model, [], quiet())
    with pytest.raises(GradInitError, match="needs batches"):
        lsuv(model, None, quiet())
    with pytest.raises(GradInitError, match="forward signature"):
        lsuv(model, [{"wrong": torch.randn(4, 24)}], quiet())
    assert_same_state(model, before)
    for bad in (dict(tol=0), dict(target_std=-1.0), dict(max_tries=0), dict(exclude=("(",)), dict(layer_types=(int,))):
        with pytest.raises(ValueError):
            LSUVConfig(**bad)


def test_loss_fn_runs_the_forward_for_batches_that_are_not_argument_lists():
    torch.manual_seed(0)
    model = DeepMLP(depth=2)
    batch = (torch.randn(32, 24), torch.randint(0, 3, (32,)))
    with pytest.raises(GradInitError):
        lsuv(copy.deepcopy(model), [batch], quiet())  # model(x, y) does not fit forward(x)
    calls = []

    def loss_fn(m, b):
        calls.append(1)
        return nn.functional.cross_entropy(m(b[0]), b[1])

    result = lsuv(model, [batch], quiet(), loss_fn=loss_fn)
    assert len(result.layers) == 3 and calls


# --- peer check ----------------------------------------------------------------------------
class PlainCNN(nn.Module):
    """A positional-input CNN that PyPI's lsuv package handles (no BatchNorm, registration
    order = execution order)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@pytest.mark.parametrize("orthonormal", [False, True])
def test_agrees_with_pypi_lsuv_package(orthonormal):
    peer = pytest.importorskip("lsuv")
    torch.manual_seed(0)
    base = PlainCNN()
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    theirs, ours = copy.deepcopy(base), copy.deepcopy(base)
    peer.lsuv_with_singlebatch(theirs, x, do_orthonorm=orthonormal, verbose=False)
    result = lsuv(ours, [x], quiet(orthonormal=orthonormal))
    names = ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert [r["layer"] for r in result.layers] == names
    s_theirs, s_ours = output_stds(theirs, x, names), output_stds(ours, x, names)
    for n in names:
        assert abs(s_ours[n] - 1.0) <= 0.1 and abs(s_theirs[n] - 1.0) <= 0.1, (n, s_ours[n], s_theirs[n])
        assert s_ours[n] == pytest.approx(s_theirs[n], abs=0.1), n
    if not orthonormal:
        # Same weights in, same algorithm: the same rescaled weights out, up to rounding.
        for n in names:
            assert s_ours[n] == pytest.approx(s_theirs[n], rel=1e-5), n
        for (n, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=n)


# --- several processes ---------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks_worker(rank: int, port: int, out: str, job) -> None:
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    # As torchrun sets them: accelerate's collectives read these, not just the process group.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ.update(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    dist.init_process_group("gloo")
    # As a Trainer with use_cpu=True does: accelerate's reduce (which hf_gradinit averages
    # with) is a silent no-op on CPU unless its state was created with cpu=True.
    from accelerate import PartialState

    PartialState(cpu=True)
    try:
        torch.save(job(rank), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_on_two_ranks(tmp_path, job) -> list:
    """Run ``job(rank)`` (a module-level function) in two real gloo processes; return what each
    returned."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_two_ranks_worker, args=(r, port, str(tmp_path), job)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _full_batch() -> torch.Tensor:
    return torch.randn(64, 24, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.5, 2.0, 24)


def _lsuv_shard(rank: int) -> dict:
    torch.manual_seed(0)
    model = DeepMLP(depth=3)
    result = lsuv(model, [_full_batch()[rank::2]], quiet())
    return {"tensors": result.tensors, "layers": result.layers}


def test_two_processes_pool_their_statistics(tmp_path):
    """Each rank sees half the batch; the output statistics are pooled, so both reach the
    weights a single process reaches on the whole batch."""
    r0, r1 = run_on_two_ranks(tmp_path, _lsuv_shard)
    assert r0["tensors"].keys() == r1["tensors"].keys()
    assert all(torch.equal(r0["tensors"][n], r1["tensors"][n]) for n in r0["tensors"])
    torch.manual_seed(0)
    single = lsuv(DeepMLP(depth=3), [_full_batch()], quiet())
    for a, b in zip(single.layers, r0["layers"], strict=True):
        assert b["std_after"] == pytest.approx(a["std_after"], rel=1e-6) and a["tries"] == b["tries"]
    for n, t in single.tensors.items():
        torch.testing.assert_close(r0["tensors"][n], t, rtol=1e-6, atol=1e-7)


def test_orthonormal_draws_follow_the_models_own_randomness_unless_seeded():
    """Models built with different seeds must not end with the same LSUV weights (they did, with
    cosine 0.9999998, when the draws came from a fixed LSUVConfig.seed)."""
    batches = reversal_batches(1)

    def first_weight(seed: int, config: LSUVConfig):
        model = tiny_marian(seed=seed)
        result = lsuv(model, batches, config)
        return model.model.encoder.layers[0].self_attn.k_proj.weight.detach().flatten(), result

    a, ra = first_weight(0, quiet())
    b, _ = first_weight(1, quiet())
    again, _ = first_weight(0, quiet())
    cosine = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    assert abs(cosine) < 0.5 and torch.equal(a, again)
    assert isinstance(ra.config["seed"], int)  # the derived seed is recorded
    fixed_a, _ = first_weight(0, quiet(seed=3))
    fixed_b, _ = first_weight(1, quiet(seed=3))
    assert float(torch.nn.functional.cosine_similarity(fixed_a, fixed_b, dim=0)) > 0.99  # an explicit seed fixes them
    with pytest.raises(ValueError, match="seed must be None or an integer"):
        LSUVConfig(seed=2**70)
