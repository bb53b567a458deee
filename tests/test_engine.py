"""GradInit through its public API: what it learns, and what it leaves the model as."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    SmallCNN,
    assert_same_state,
    image_batches,
    mlp_batches,
    reversal_batches,
    smooth_mlp,
    snapshot,
    tiny_marian,
    xent,
)
from torch import nn

from hf_gradinit import GradInitConfig, GradInitError, GradInitResult, apply_scales, gradinit
from hf_gradinit.batches import split_batch
from hf_gradinit.functional import LossEvaluator, grad_norm
from hf_gradinit.methods.gradinit.objective import virtual_step
from hf_gradinit.scales import trainable_parameters


def lookahead_loss(model: nn.Module, batches: list[dict], config: GradInitConfig) -> float:
    """Mean over batches of L(S~; theta - eta A[g(S)]): the loss one step of the target
    optimizer reaches, measured the way GradInit's objective defines it."""
    config = config.resolve()
    model.eval()
    infos = trainable_parameters(model)
    ev = LossEvaluator(model, [i.name for i in infos], [i.param for i in infos], None)
    total = 0.0
    for batch in batches:
        s, s_tilde = split_batch(batch, config.overlap)
        _, grads = ev.grad(s)
        theta_prime, _ = virtual_step(
            [p.detach() for p in ev.params], grads, grad_norm(grads, config.norm_order), config
        )
        with torch.no_grad():
            total += float(ev.loss(s_tilde, theta_prime))
    return total / len(batches)


# --- what it learns ------------------------------------------------------------------------
def test_post_ln_marian_lookahead_loss_improves_on_held_out_batches(quiet):
    """The quantity GradInit optimises, measured on batches it never saw, goes down."""
    model = tiny_marian(seed=0)
    config = quiet(target="adam", eta=5e-3, iters=60, lr=3e-2, gamma=1e4)
    held_out = reversal_batches(4, seed=99)
    before = lookahead_loss(model, held_out, config)
    result = gradinit(model, reversal_batches(20, seed=0), config)
    after = lookahead_loss(model, held_out, config)
    assert result.iterations == 60
    # Measured 3.794 -> 3.726; a random-token task near its unigram level moves slowly.
    assert after < before - 0.03, (before, after)
    # Training-set objective went down over the run too.
    objective = [h["lookahead_loss"] for h in result.history if h["kind"] == "objective"]
    assert sum(objective[-10:]) / 10 < sum(objective[:10]) / 10


def test_marian_tied_embedding_has_one_scale_and_stays_tied(quiet):
    model = tiny_marian(seed=1)
    shared = model.model.shared.weight
    before = shared.detach().clone()
    result = gradinit(model, reversal_batches(4, seed=1), quiet(iters=5, lr=5e-2, gamma=1e6))
    tied_names = {
        "model.shared.weight",
        "model.encoder.embed_tokens.weight",
        "model.decoder.embed_tokens.weight",
        "lm_head.weight",
    }
    assert [n for n in result.scales if n in tied_names] == ["model.shared.weight"]
    assert model.lm_head.weight is shared and model.model.encoder.embed_tokens.weight is shared
    assert result.scales["model.shared.weight"] != 1.0
    torch.testing.assert_close(shared.detach(), before * result.scales["model.shared.weight"])


def test_marian_frozen_positions_untouched_and_zero_biases_skipped(quiet):
    model = tiny_marian(seed=2)
    positions = {n: p.detach().clone() for n, p in model.named_parameters() if "embed_positions" in n}
    assert positions and all(not p.requires_grad for n, p in model.named_parameters() if n in positions)
    result = gradinit(model, reversal_batches(4, seed=2), quiet(iters=3, gamma=1e6))
    for name, value in positions.items():
        assert name not in result.scales
        assert torch.equal(dict(model.named_parameters())[name], value)
    zero = [n for n, p in model.named_parameters() if p.requires_grad and float(p.detach().norm()) == 0.0]
    # Marian's biases start at zero: they are stepped (no scale) and reported as skipped.
    assert all(result.skipped.get(n) == "zero norm" for n in zero if "bias" in n)
    assert {result.kinds[n] for n in result.scales} == {"weight", "norm"}


@pytest.mark.parametrize("hvp", ["exact", "finite_difference"])
def test_default_attention_kept_in_both_hvp_modes(hvp, quiet):
    model = tiny_marian(seed=4)
    impl = model.config._attn_implementation
    result = gradinit(model, reversal_batches(3, seed=4), quiet(iters=3, gamma=1e-9, hvp=hvp))
    assert result.num_constraint_steps == 3
    assert model.config._attn_implementation == impl


class _FlashOnlyModel(nn.Module):
    """Stands in for a Hugging Face model loaded with a kernel that has no double backward."""

    def __init__(self):
        super().__init__()
        self.body = smooth_mlp(seed=3)
        self.config = type("Config", (), {"_attn_implementation": "flash_attention_2"})()
        self.switches: list[str] = []
        self.seen: list[str] = []

    def set_attn_implementation(self, implementation: str) -> None:
        self.switches.append(implementation)
        self.config._attn_implementation = implementation

    def forward(self, x):
        self.seen.append(self.config._attn_implementation)
        return self.body(x)


@pytest.mark.parametrize("hvp", ["exact", "finite_difference"])
def test_attention_without_double_backward_switched_only_for_exact_and_restored(hvp, quiet):
    model = _FlashOnlyModel()
    gradinit(model, mlp_batches(2), quiet(target="sgd", iters=2, gamma=1e-9, hvp=hvp), loss_fn=xent)
    if hvp == "exact":
        assert model.switches == ["sdpa", "flash_attention_2"] and set(model.seen) == {"sdpa"}
    else:
        assert model.switches == [] and set(model.seen) == {"flash_attention_2"}
    assert model.config._attn_implementation == "flash_attention_2"


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_exact_and_finite_difference_modes_learn_close_scales(scheme, quiet):
    """The Hessian-vector products give nearly the same constraint-step trajectory (float64)."""
    runs = {}
    for hvp in ("exact", "finite_difference"):
        model = smooth_mlp(seed=5)
        cfg = quiet(target="sgd", gamma=0.05, iters=40, hvp=hvp, fd_scheme=scheme)
        runs[hvp] = gradinit(model, mlp_batches(8, seed=5), cfg, loss_fn=xent)
    assert runs["exact"].num_constraint_steps > 10
    for name, a in runs["exact"].scales.items():
        assert runs["finite_difference"].scales[name] == pytest.approx(a, abs=1e-6)


def test_compiled_evaluation_learns_the_same_scales(quiet):
    """compile=True changes how the passes run, not what they compute; the model is left
    uncompiled (float64, so fused kernels' rounding cannot flip a step)."""
    runs = []
    for compile in (False, True):
        model = smooth_mlp(seed=6)
        cfg = quiet(target="sgd", gamma=1.0, iters=12, compile=compile)
        runs.append(gradinit(model, mlp_batches(3, seed=6), cfg, loss_fn=xent))
        assert not any("_orig_mod" in name for name, _ in model.named_parameters())
        assert type(model) is nn.Sequential
    eager, compiled = runs
    assert [h["kind"] for h in eager.history] == [h["kind"] for h in compiled.history]
    assert {"objective", "constraint"} <= {h["kind"] for h in eager.history}
    for name, a in eager.scales.items():
        assert compiled.scales[name] == pytest.approx(a, abs=1e-9)


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_finite_difference_scales_within_tolerance_of_exact_float32_marian(scheme, quiet):
    """The stated tolerance of the finite-difference mode: after 40 constraint steps in float32
    on a Post-LN Marian, every learned scale is within 5e-3 of the exact mode's while the
    scales themselves moved by up to 0.1 (measured: 9e-4 forward, 6e-4 central)."""
    runs = {}
    for hvp in ("exact", "finite_difference"):
        model = tiny_marian(seed=3, dropout=0.0)
        cfg = quiet(gamma=1e-3, iters=40, hvp=hvp, fd_scheme=scheme)
        runs[hvp] = gradinit(model, reversal_batches(4, batch_size=12, seed=3), cfg)
    exact, approx = runs["exact"], runs["finite_difference"]
    assert exact.num_constraint_steps == approx.num_constraint_steps == 40
    assert max(abs(a - 1.0) for a in exact.scales.values()) > 0.05
    gap = max(abs(approx.scales[n] - a) for n, a in exact.scales.items())
    assert gap < 5e-3, f"{scheme}: a finite-difference scale is {gap:.2e} away from the exact one"


# --- what it leaves the model as -----------------------------------------------------------
def test_batchnorm_uses_batch_statistics_and_running_stats_unchanged(quiet):
    torch.manual_seed(0)
    model = SmallCNN()
    batches = image_batches(4)
    s, _ = split_batch(batches[0], 0.5)
    model.train()
    model.features[-1].p = 0.0  # the same forward as GradInit's: BN on batch statistics, no dropout
    with torch.no_grad():
        expected = float(model(**s)["loss"])
    model.features[-1].p = 0.5
    stats = {n: b.clone() for n, b in model.named_buffers()}  # after the forward above updated them
    result = gradinit(model, batches, quiet(target="sgd", iters=4))
    assert result.history[0]["loss"] == pytest.approx(expected, rel=1e-6)
    for name, value in stats.items():
        assert torch.equal(dict(model.named_buffers())[name], value), name
    assert model.training and all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_dropout_off_during_gradinit_and_modes_restored(quiet):
    model = tiny_marian(seed=6, dropout=0.5)
    model.train()
    model.model.encoder.eval()  # a mixed state must come back exactly
    modes = {n: m.training for n, m in model.named_modules()}
    batches = reversal_batches(2, seed=6)
    s, _ = split_batch(batches[0], 0.5)
    model.eval()
    with torch.no_grad():
        expected = float(model(**s).loss)
    model.train()
    model.model.encoder.eval()
    result = gradinit(model, batches, quiet(iters=2, gamma=1e6))
    assert result.history[0]["loss"] == pytest.approx(expected, rel=1e-6)
    assert {n: m.training for n, m in model.named_modules()} == modes


def test_bf16_model_runs_in_fp32_and_comes_back_bf16(quiet):
    model = tiny_marian(seed=7)
    reference = tiny_marian(seed=7)
    model.to(torch.bfloat16)
    dtypes = {n: t.dtype for n, t in model.state_dict().items()}
    result = gradinit(model, reversal_batches(3, seed=7), quiet(iters=3, gamma=1e6, lr=5e-2))
    assert {n: t.dtype for n, t in model.state_dict().items()} == dtypes
    # GradInit's first loss is the fp32 loss of the bf16-rounded weights.
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()}, strict=False)
    s, _ = split_batch(reversal_batches(3, seed=7)[0], 0.5)
    bf16_weights = tiny_marian(seed=7).to(torch.bfloat16).float().eval()
    with torch.no_grad():
        expected = float(bf16_weights(**s).loss)
    assert result.history[0]["loss"] == pytest.approx(expected, rel=1e-5)
    # The final weights are the bf16 cast of alpha * theta0.
    fresh = tiny_marian(seed=7).to(torch.bfloat16)
    apply_scales(fresh, result)
    for (n, p), q in zip(model.named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_fed_half_precision_inputs(dtype, quiet):
    """A bf16/fp16 model trained on bf16/fp16 inputs: GradInit runs in fp32, so must its inputs
    (it failed with "mat1 and mat2 must have the same dtype" while LSUV and MetaInit worked)."""
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(12, 6, generator=g).to(dtype), torch.randint(0, 3, (12,), generator=g)) for _ in range(3)]

    def loss_fn(m, batch):
        return nn.functional.cross_entropy(m(batch[0]).float(), batch[1])

    result = gradinit(model, batches, quiet(target="sgd", eta=0.1, iters=3), loss_fn=loss_fn)
    assert all(p.dtype == dtype for p in model.parameters()) and len(result.history) == 3
    assert batches[0][0].dtype == dtype  # the caller's batch is not changed


@pytest.mark.parametrize("build", ["marian", "mlp"])
def test_callers_rng_state_restored(build, quiet):
    if build == "marian":
        model, batches, loss_fn = tiny_marian(seed=8), reversal_batches(2, seed=8), None
    else:
        model, batches, loss_fn = smooth_mlp(seed=8), mlp_batches(2, seed=8), xent
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    gradinit(model, batches, quiet(iters=2, seed=77), loss_fn=loss_fn)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(3), expected)


def test_activation_checkpointing_off_during_gradinit_and_restored(quiet):
    model = tiny_marian(seed=9)
    model.activation_checkpointing_enable()
    model.train()
    seen = []

    def loss_fn(m, batch):
        seen.append(m.is_activation_checkpointing)
        return m(**batch).loss

    gradinit(model, reversal_batches(2, seed=9), quiet(iters=2, gamma=1e6), loss_fn=loss_fn)
    assert seen and not any(seen)
    assert model.is_activation_checkpointing


def test_nothing_left_behind_and_parameter_objects_kept(quiet):
    model = tiny_marian(seed=10)
    params = {n: (p, p.data_ptr()) for n, p in model.named_parameters()}
    hooks = [(m._forward_hooks.copy(), m._forward_pre_hooks.copy(), m._backward_hooks.copy()) for m in model.modules()]
    modules = [type(m) for m in model.modules()]
    gradinit(model, reversal_batches(2, seed=10), quiet(iters=2))
    assert {n: (p, p.data_ptr()) for n, p in model.named_parameters()} == params
    assert [(m._forward_hooks, m._forward_pre_hooks, m._backward_hooks) for m in model.modules()] == hooks
    assert [type(m) for m in model.modules()] == modules
    assert all(p.grad is None for p in model.parameters())


# --- failure leaves the model exactly as it was --------------------------------------------
class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("failure", ["exception", "nan", "interrupt"])
def test_failure_mid_run_restores_model_bit_for_bit(failure, quiet):
    model = tiny_marian(seed=11).to(torch.bfloat16)
    model.activation_checkpointing_enable()
    model.train()
    before = snapshot(model)
    calls = {"n": 0}

    def loss_fn(m, batch):
        calls["n"] += 1
        loss = m(**batch).loss
        if calls["n"] == 7:  # a few iterations in, after the weights have been changed
            if failure == "exception":
                raise _Boom("simulated failure")
            if failure == "interrupt":
                raise KeyboardInterrupt
            return loss * float("nan")
        return loss

    expected = KeyboardInterrupt if failure == "interrupt" else GradInitError
    with pytest.raises(expected) as info:
        gradinit(model, reversal_batches(4, seed=11), quiet(iters=10, lr=0.1, gamma=1e6), loss_fn=loss_fn)
    if failure != "interrupt":
        assert "restored" in str(info.value)
    assert calls["n"] >= 7
    assert_same_state(model, before)
    assert model.training and model.is_activation_checkpointing


def test_failure_while_preparing_restores_what_was_already_swapped(quiet, monkeypatch):
    """Out of memory half-way through making GradInit's fp32 working copies of a bf16 model:
    the parameters already swapped go back too (dtype and bits)."""
    import hf_gradinit.model_state as model_state

    model = tiny_marian(seed=3).to(torch.bfloat16)
    before = snapshot(model)
    real, calls = model_state.compute_dtype, {"n": 0}

    def failing_compute_dtype(dtype):
        calls["n"] += 1
        if calls["n"] > 3:  # a few parameters into the swap
            raise torch.OutOfMemoryError("simulated: out of memory")
        return real(dtype)

    monkeypatch.setattr(model_state, "compute_dtype", failing_compute_dtype)
    with pytest.raises(GradInitError, match="out of memory"):
        gradinit(model, reversal_batches(2, seed=3), quiet(iters=2))
    assert calls["n"] > 3
    assert_same_state(model, before)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


# --- reproducibility and persistence -------------------------------------------------------
def test_same_seed_same_scales(quiet):
    results = [
        gradinit(tiny_marian(seed=12), reversal_batches(4, seed=12), quiet(iters=6, gamma=300.0)) for _ in range(2)
    ]
    assert results[0].scales == results[1].scales
    assert [h["kind"] for h in results[0].history] == [h["kind"] for h in results[1].history]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_saved_scales_reapplied_give_identical_weights(dtype, tmp_path, quiet):
    model = tiny_marian(seed=13).to(dtype)
    result = gradinit(model, reversal_batches(4, seed=13), quiet(iters=5, lr=5e-2, gamma=1e6))
    path = result.save(tmp_path / "init" / "scales.json")
    loaded = GradInitResult.load(path)
    assert loaded.scales == result.scales and loaded.history == result.history
    fresh = tiny_marian(seed=13).to(dtype)
    apply_scales(fresh, loaded)
    for (name, p), q in zip(model.named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_apply_scales_checks_names_before_writing():
    model = nn.Linear(3, 2)
    before = snapshot(model)
    with pytest.raises(KeyError, match="not parameters"):
        apply_scales(model, {"weight": 2.0, "missing.weight": 1.0})
    assert_same_state(model, before)
    with pytest.raises(ValueError, match="finite"):
        apply_scales(model, {"weight": float("nan")})
    assert_same_state(model, before)


def test_apply_scales_warns_on_a_differently_built_model(quiet):
    result = gradinit(smooth_mlp(seed=0), mlp_batches(2), quiet(target="sgd", iters=2), loss_fn=xent)
    with pytest.warns(UserWarning, match="another seed"):
        apply_scales(smooth_mlp(seed=1), result)


def test_one_shot_iterator_that_runs_out_stops_early_with_warning(quiet):
    batches = iter(mlp_batches(3))
    with pytest.warns(UserWarning, match="ran out after 3"):
        result = gradinit(smooth_mlp(), batches, quiet(target="sgd", iters=10), loss_fn=xent)
    assert result.iterations == 3


def test_reiterable_data_is_cycled(quiet):
    result = gradinit(smooth_mlp(), mlp_batches(2), quiet(target="sgd", iters=5), loss_fn=xent)
    assert result.iterations == 5


# --- output --------------------------------------------------------------------------------
def test_progress_bar_and_summary(capsys):
    result = gradinit(
        smooth_mlp(), mlp_batches(2), GradInitConfig(target="sgd", iters=3, show_progress=True), loss_fn=xent
    )
    assert "GradInit" in capsys.readouterr().err
    text = result.summary()
    assert "3 iterations" in text and "3.weight" in text and "weight:" in text
    metrics = result.metrics()
    assert metrics["gradinit/iterations"] == 3.0 and "gradinit/scale_weight_mean" in metrics
    gradinit(smooth_mlp(), mlp_batches(2), GradInitConfig(target="sgd", iters=3, show_progress=False), loss_fn=xent)
    assert capsys.readouterr().err == ""


def test_history_records_each_iteration(quiet):
    result = gradinit(smooth_mlp(), mlp_batches(4), quiet(target="sgd", iters=4, gamma=1e6), loss_fn=xent)
    assert [h["step"] for h in result.history] == [0, 1, 2, 3]
    metrics = result.metrics()
    assert metrics["gradinit/initial_grad_norm"] == result.history[0]["grad_norm"] != result.history[-1]["grad_norm"]
    assert metrics["gradinit/final_grad_norm"] == result.history[-1]["grad_norm"]
    assert metrics["gradinit/initial_loss"] == result.history[0]["loss"]
    for h in result.history:
        assert h["kind"] == "objective"
        assert h["objective"] == pytest.approx(h["lookahead_loss"] / 0.1)
        assert h["seconds"] > 0
    assert result.timings["total_s"] >= result.timings["iterations_s"] > 0
    assert result.config["gamma"] == 1e6 and result.config["eta"] == 0.1


# --- gradients autograd hands out shared, and parameters that enter linearly ---------------
class _TokensWithClass(nn.Module):
    """ViT-like: a class token concatenated to the inputs, plus position embeddings and an
    extra bias, all added directly. With one sample, autograd returns the position
    embeddings' gradient and the extra bias's gradient as one tensor, and the class token's
    as a slice of it; ``alias=False`` computes the same function without sharing."""

    def __init__(self, alias: bool):
        super().__init__()
        torch.manual_seed(0)
        self.alias = alias
        self.cls = nn.Parameter(torch.randn(1, 1, 4, dtype=torch.float64))
        self.pos = nn.Parameter(torch.randn(1, 3, 4, dtype=torch.float64))
        self.extra = nn.Parameter(torch.randn(1, 3, 4, dtype=torch.float64))
        self.head = nn.Linear(4, 3).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.cls.expand(x.shape[0], 1, 4), x], dim=1)
        if not self.alias:  # the same values, through fresh tensors in the backward pass
            tokens = tokens * 1.0
            return self.head(torch.tanh(tokens + self.pos * 1.0 + self.extra * 1.0).mean(1))
        return self.head(torch.tanh(tokens + self.pos + self.extra).mean(1))


def _token_batches() -> list[tuple]:
    g = torch.Generator().manual_seed(1)
    # Two samples: S and S~ have one sample each (overlap 0.5 of a 2-sample batch rounds so).
    return [(torch.randn(2, 2, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (2,), generator=g))]


def test_gradients_autograd_shares_are_not_corrupted_by_in_place_steps(quiet):
    """Same scales whether or not autograd hands out aliased gradients (it did corrupt them
    when the steps updated gradients in place)."""
    runs = []
    for alias in (True, False):
        model = _TokensWithClass(alias)
        cfg = quiet(target="adam", eta=0.05, weight_decay=0.1, gamma=50.0, iters=6)
        runs.append(gradinit(model, _token_batches(), cfg, loss_fn=xent))
    assert {h["kind"] for h in runs[0].history} == {"objective"}
    for name, a in runs[1].scales.items():
        assert runs[0].scales[name] == pytest.approx(a, abs=1e-12), name


def test_loss_evaluator_gradients_own_their_memory():
    a, b, c = (nn.Parameter(torch.randn(3)) for _ in range(3))

    class Sum(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = a, b, c

    model = Sum()
    loss_fn = lambda m, x: ((x + m.a + m.b) ** 2).sum() + 0.0 * m.c.sum()
    ev = LossEvaluator(model, ["a", "b", "c"], [a, b, c], loss_fn)
    _, grads = ev.grad(torch.randn(3))
    assert len({g.untyped_storage().data_ptr() for g in grads}) == 3
    assert all(torch._debug_has_internal_overlap(g) == 0 for g in grads)


@pytest.mark.parametrize("hvp", ["exact", "finite_difference"])
def test_parameter_entering_linearly_and_unused_parameter(hvp, quiet):
    """A parameter whose gradient is constant has no Hessian rows (its scale gets no
    constraint-step gradient); one outside the loss gets a broadcast zero gradient. Both run
    in either mode and agree."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Linear(5, 3).double()
            self.shift = nn.Parameter(torch.randn(3, dtype=torch.float64))
            self.unused = nn.Parameter(torch.randn(2, dtype=torch.float64))

        def forward(self, x):
            return self.net(x)

    def loss_fn(model, batch):
        linear = 0.1 * (model.shift * torch.arange(3.0, dtype=torch.float64)).sum()
        return xent(model, batch) + linear + 0.0 * model.unused.sum()

    result = gradinit(M(), mlp_batches(3), quiet(target="sgd", gamma=1e-6, iters=4, hvp=hvp), loss_fn=loss_fn)
    assert result.num_constraint_steps == 4
    assert result.scales["shift"] == 1.0 and result.scales["unused"] == 1.0
    assert result.scales["net.weight"] != 1.0


def test_unscaled_tensors_are_reset_before_every_iteration(quiet):
    """The steps move every parameter (zero-norm and excluded ones too); each iteration must
    start from alpha * theta0 with those at their original values."""
    model = smooth_mlp(seed=7)
    with torch.no_grad():
        model[0].bias.zero_()
    excluded_before = model[3].bias.detach().clone()
    seen = []

    def loss_fn(m, batch):
        seen.append((m[0].bias.detach().clone(), m[3].bias.detach().clone()))
        return xent(m, batch)

    cfg = quiet(target="sgd", normalize_step=False, gamma=1e9, iters=4, exclude=(r"^3\.bias$",))
    result = gradinit(model, mlp_batches(4, seed=7), cfg, loss_fn=loss_fn)
    assert result.skipped == {"0.bias": "zero norm", "3.bias": "excluded"}
    at_theta = seen[0::2]  # objective steps: a pass at theta, then one at theta'
    assert len(at_theta) == 4
    for zero_bias, excluded in at_theta:
        assert torch.equal(zero_bias, torch.zeros_like(zero_bias))
        assert torch.equal(excluded, excluded_before)
    assert not torch.equal(seen[1][0], torch.zeros_like(seen[1][0]))  # theta' did move it
