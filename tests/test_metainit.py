"""MetaInit through its public API, and focused checks of its maths."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import (
    assert_same_state,
    mlp_batches,
    reversal_batches,
    smooth_mlp,
    snapshot,
    tiny_marian,
    xent,
)
from test_lsuv import run_on_two_ranks
from torch import nn
from torch.func import functional_call

from hf_gradinit import GradInitError, MetaInitConfig, MetaInitResult, apply_scales, get_initializer, metainit
from hf_gradinit.distributed import Collective
from hf_gradinit.methods.metainit import MetaInit, gradient_quotient, randomize_batch
from hf_gradinit.methods.metainit.quotient import _ComposedNorms
from hf_gradinit.model_state import PreparedModel
from hf_gradinit.scales import trainable_parameters

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(**kwargs) -> MetaInitConfig:
    kwargs.setdefault("show_progress", False)
    return MetaInitConfig(**kwargs)


def smooth_bn_cnn(seed: int = 0) -> nn.Module:
    """Conv + BatchNorm (batch statistics during MetaInit) + tanh, in float64."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    ).double()


def norm_gradient(model, infos, batch, loss_fn, hvp, factors=None):
    """(GQ, dGQ/dnorm) from MetaInit's own step machinery at norms = factors * initial norms."""
    run = MetaInit(model, MetaInitConfig(hvp=hvp), loss_fn, Collective(False))
    assert [i.param for i in run.parameters()] == [i.param for i in infos]
    with PreparedModel(model, infos, hvp="exact") as prepared:
        run.setup(prepared, batch)
        if factors is not None:
            run.norms = run.init_norms * torch.tensor(factors, dtype=torch.float64)
        gq, _, d_scale = run.quotient(batch)
    return float(gq), d_scale / run.init_norms, [infos[i].name for i in run.scaled_idx], run.scales


def reference_gq(model, batch, loss_fn, scales: dict[str, float]) -> float:
    """The paper's GQ at the given scales, from an explicit Hessian (float64, tiny models only)."""
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = list(base)
    sizes = [base[n].numel() for n in names]

    def loss_of(flat):
        parts = {n: t.view_as(base[n]) for n, t in zip(names, flat.split(sizes), strict=True)}
        return loss_fn(lambda *a: functional_call(model, parts, a), batch)

    flat = torch.cat([(base[n] * scales.get(n, 1.0)).reshape(-1) for n in names])
    g = torch.autograd.functional.jacobian(loss_of, flat)
    hg = torch.autograd.functional.hessian(loss_of, flat) @ g
    sgn = torch.where(g >= 0, 1.0, -1.0).double()
    return float(((g - hg) / (g + 1e-5 * sgn) - 1).abs().mean())


def cnn_loss(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


# --- the maths -----------------------------------------------------------------------------
def test_gradient_quotient_is_the_papers_formula():
    g = [torch.tensor([2.0, -1.0, 0.0, 1e-7], dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)]
    hg = [torch.tensor([1.0, 0.5, 0.3, -2e-7], dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)]
    eps = 1e-5
    terms = []
    for a, b in zip(g, hg, strict=True):
        sgn = torch.where(a >= 0, 1.0, -1.0).double()  # sgn(0) = +1, as the authors' code
        terms.append(((a - b) / (a + eps * sgn) - 1).abs().reshape(-1))
    expected = torch.cat(terms).mean()
    torch.testing.assert_close(gradient_quotient(g, hg, eps), expected, rtol=1e-12, atol=0)
    # A linear function along the gradient (Hg = 0) has GQ = mean eps / |g + eps sgn(g)|.
    flat = torch.tensor([1.0, -2.0], dtype=torch.float64)
    zero = torch.zeros(2, dtype=torch.float64)
    assert float(gradient_quotient([flat], [zero], eps)) == pytest.approx((eps / (1 + eps) + eps / (2 + eps)) / 2)


@pytest.mark.parametrize("hvp", ["exact", "finite_difference"])
@pytest.mark.parametrize("case", ["layernorm_mlp", "batchnorm_cnn"])
def test_norm_gradient_matches_numerical_derivative(hvp, case):
    """dGQ/dnorm from the run's machinery against central differences of the paper's GQ built
    from an explicit Hessian. The models hold LayerNorm / BatchNorm on batch statistics, whose
    fused kernels have a wrong third derivative: exact mode must route around them."""
    if case == "layernorm_mlp":
        model, batch, loss_fn = smooth_mlp(0), mlp_batches(1)[0], xent
    else:
        g = torch.Generator().manual_seed(0)
        model = smooth_bn_cnn()
        batch = (torch.randn(6, 2, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g))
        loss_fn = cnn_loss
    infos = trainable_parameters(model)
    factors = [1.3, 0.8] if case == "layernorm_mlp" else [1.2, 0.9]
    gq, d_norm, names, scales = norm_gradient(model, infos, batch, loss_fn, hvp, factors)
    at = dict(zip(names, scales, strict=True))
    assert gq == pytest.approx(reference_gq(model, batch, loss_fn, at), rel=1e-6)
    init_norms = {i.name: float(i.param.detach().norm()) for i in infos}
    h = 1e-7  # GQ bends sharply where some g_k is near 0: a small step
    for j, name in enumerate(names):
        up, down = dict(at), dict(at)
        up[name] += h / init_norms[name]
        down[name] -= h / init_norms[name]
        numeric = (reference_gq(model, batch, loss_fn, up) - reference_gq(model, batch, loss_fn, down)) / (2 * h)
        assert float(d_norm[j]) == pytest.approx(numeric, rel=1e-4), (name, float(d_norm[j]), numeric)


def test_composed_norms_have_correct_third_derivatives():
    torch.manual_seed(0)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    x4 = torch.randn(4, 6, 2, 2, dtype=torch.float64, requires_grad=True)

    def first_derivatives(fn):
        def run(*args):
            with _ComposedNorms():
                out = fn(*args)
                return torch.autograd.grad(out.sin().sum(), args, create_graph=True)

        return run

    layer_norm = first_derivatives(lambda x, w, b: nn.functional.layer_norm(x, (6,), w, b))
    batch_norm = first_derivatives(lambda x, w, b: nn.functional.batch_norm(x, None, None, w, b, training=True))
    assert torch.autograd.gradgradcheck(layer_norm, (x, w, b))
    assert torch.autograd.gradgradcheck(batch_norm, (x4, w, b))
    # Same values as torch's kernels.
    with _ComposedNorms():
        ours = nn.functional.layer_norm(x, (6,), w, b), nn.functional.batch_norm(x4, None, None, w, b, training=True)
    torch.testing.assert_close(ours[0], nn.functional.layer_norm(x, (6,), w, b))
    torch.testing.assert_close(ours[1], nn.functional.batch_norm(x4, None, None, w, b, training=True))


def test_exact_and_finite_difference_agree_on_a_tiny_model():
    batches = mlp_batches(4)
    runs = {
        hvp: metainit(smooth_mlp(0), batches, quiet(hvp=hvp, steps=8, lr=0.01), loss_fn=xent)
        for hvp in ("exact", "finite_difference")
    }
    exact, fd = runs["exact"], runs["finite_difference"]
    for a, b in zip(exact.history, fd.history, strict=True):
        assert b["gq"] == pytest.approx(a["gq"], rel=1e-6)
    # Sign-SGD: the same signs at every step give the same norms.
    for name, a in exact.scales.items():
        assert fd.scales[name] == pytest.approx(a, rel=1e-12), name


def test_finite_difference_on_tiny_marian_in_float32_is_close_to_exact():
    """In float32 on a Transformer the finite difference is coarser (GQ divides Hg by g entry
    by entry): measured 0.974 vs 0.925 for GQ, with every norm-gradient sign the same."""
    model = tiny_marian(seed=0)
    infos = trainable_parameters(model)
    batch = reversal_batches(1)[0]
    gq_e, d_e, _, _ = norm_gradient(model, infos, batch, None, "exact")
    gq_f, d_f, _, _ = norm_gradient(model, infos, batch, None, "finite_difference")
    assert gq_f == pytest.approx(gq_e, rel=0.1)
    assert float((d_e.sign() == d_f.sign()).double().mean()) >= 0.9


# --- what it learns ------------------------------------------------------------------------
def test_gradient_quotient_decreases_on_tiny_mlp():
    # One batch, cycled: GQ is then one function of the norms, comparable across steps. The
    # norms here are about 1-3, so lr 0.01 (the paper's 0.1 is an absolute step on a norm).
    result = metainit(smooth_mlp(0), mlp_batches(1, batch_size=32), quiet(steps=40, lr=0.01), loss_fn=xent)
    gq = [h["gq"] for h in result.history]
    assert result.steps == 40 and result.initial_gq == gq[0]
    # Measured 4.97 -> 3.94.
    assert result.final_gq < 0.85 * result.initial_gq
    assert sum(gq[-5:]) / 5 < sum(gq[:5]) / 5
    assert set(result.scales) == {"0.weight", "3.weight"}
    assert set(result.skipped) == {"0.bias", "2.weight", "2.bias", "3.bias"}


def test_gradient_quotient_decreases_on_tiny_marian():
    model = tiny_marian(seed=0)
    positions = model.model.encoder.embed_positions.weight.detach().clone()
    result = metainit(model, reversal_batches(1), quiet(steps=15, lr=0.01))
    gq = [h["gq"] for h in result.history]
    # Measured 0.925 -> 0.90 in 15 steps (0.88 after 30).
    assert result.final_gq < result.initial_gq - 0.01
    assert sum(gq[-3:]) / 3 < sum(gq[:3]) / 3
    # One norm for the tied embedding; frozen sinusoidal positions untouched; only tensors of
    # 2+ dimensions learned.
    tied = {"model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"}
    assert "model.shared.weight" in result.scales and not tied & set(result.scales)
    assert model.lm_head.weight is model.model.shared.weight
    assert torch.equal(model.model.encoder.embed_positions.weight, positions)
    assert all(model.get_parameter(n).dim() >= 2 for n in result.scales)
    assert len(result.scales) == 1 + 2 * 6 + 2 * 10


def test_norms_stay_within_bounds():
    result = metainit(
        smooth_mlp(0), mlp_batches(4), quiet(steps=30, lr=1.0, min_scale=0.5, max_scale=1.5), loss_fn=xent
    )
    assert all(0.5 - 1e-12 <= a <= 1.5 + 1e-12 for a in result.scales.values())
    assert any(a in (pytest.approx(0.5), pytest.approx(1.5)) for a in result.scales.values())


def authors_adam_metainit(
    model: nn.Module, batches: list, steps: int, lr: float, clip: float, min_scale: float = 0.01
) -> dict[str, float]:
    """The GradInit authors' MetaInit loop (``metainit`` and ``RescaleAdam`` of zhuchen03/gradinit),
    written out independently on the live parameters: GQ from a double backward, the scale
    gradient ``<dGQ/dp, p> * ||p0|| / ||p||``, clipped, bias-corrected Adam on the scale,
    ``max(alpha, 0.01)`` for weights and ``max(alpha, 0)`` for biases, zero tensors left alone.
    Their quotient takes the tensors of Linear/Conv/BatchNorm and of their ``Scale``/``Bias``
    modules; :class:`Gain` below stands for ``Scale``, so here that is every tensor."""
    params = dict(model.named_parameters())
    state = {n: {"alpha": 1.0, "init": float(p.detach().norm()), "m": 0.0, "v": 0.0} for n, p in params.items()}
    for t in range(1, steps + 1):
        x, y = batches[(t - 1) % len(batches)]
        loss = nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        prods = torch.autograd.grad(sum((g**2).sum() / 2 for g in grads), list(params.values()), create_graph=True)
        eps = 1e-5
        gq = sum(((g - hg) / (g + eps * (2 * (g >= 0).double() - 1).detach()) - 1).abs().sum()
                 for g, hg in zip(grads, prods, strict=True)) / sum(p.numel() for p in params.values())  # fmt: skip
        dgq = torch.autograd.grad(gq, list(params.values()))
        with torch.no_grad():
            for (name, p), d in zip(params.items(), dgq, strict=True):
                st, norm = state[name], float(p.norm())
                if st["init"] == 0 or norm == 0:
                    continue
                g = max(min(float((d * p).sum()) * st["init"] / norm, clip), -clip)
                st["m"] = 0.9 * st["m"] + 0.1 * g
                st["v"] = 0.999 * st["v"] + 0.001 * g * g
                step = lr / (1 - 0.9**t)
                low = 0.0 if "bias" in name else min_scale
                st["alpha"] = max(st["alpha"] - step * st["m"] / (math.sqrt(st["v"] / (1 - 0.999**t)) + 1e-8), low)
                p.mul_(st["alpha"] * st["init"] / norm)
    return {n: st["alpha"] for n, st in state.items()}


class Gain(nn.Module):
    """An elementwise gain: a 1-D ``weight`` outside any normalisation layer."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, n, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def gain_mlp(seed: int = 0) -> nn.Module:
    """tanh MLP with biases and a 1-D gain, and no LayerNorm: PyTorch's own third derivatives of
    these are exact, so the transcription of the authors' loop below may use plain autograd."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), Gain(7), nn.Linear(7, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def test_adam_variant_is_the_gradinit_authors_metainit():
    """optimizer="adam" takes the steps of the GradInit authors' MetaInit (their Table 1's
    MetaInit rows), 1-D tensors and biases included; a clip that binds is part of the check."""
    batches = mlp_batches(3)
    result = metainit(gain_mlp(0), batches, quiet(optimizer="adam", steps=5, lr=0.05, clip=0.02), loss_fn=xent)
    expected = authors_adam_metainit(gain_mlp(0), batches, steps=5, lr=0.05, clip=0.02)
    assert set(result.scales) == set(expected) == {n for n, _ in gain_mlp(0).named_parameters()}
    for name, alpha in expected.items():
        # float64 throughout, the same GQ by two graphs: equal to rounding, not bit for bit
        assert result.scales[name] == pytest.approx(alpha, rel=1e-9, abs=1e-12), name
    assert len({round(a, 6) for a in expected.values()}) > 2  # the steps differ between tensors
    assert result.config["optimizer"] == "adam" and result.config["lr"] == 0.05
    # large steps: biases reach their bound 0 and stay there (the authors skip zero tensors),
    # weights stop at min_scale
    batches = mlp_batches(2, seed=2)
    result = metainit(gain_mlp(2), batches, quiet(optimizer="adam", steps=30, lr=1.0, min_scale=0.5), loss_fn=xent)
    expected = authors_adam_metainit(gain_mlp(2), batches, steps=30, lr=1.0, clip=1.0, min_scale=0.5)
    assert sum(a == 0 for a in expected.values()) == 3 and any(a == pytest.approx(0.5) for a in expected.values())
    for name, alpha in expected.items():
        # 30 steps of Adam's normalised updates amplify rounding: 1e-15 at first, ~1e-9 by the end
        assert result.scales[name] == pytest.approx(alpha, rel=1e-6, abs=1e-9), name
    # without a binding clip the first Adam step is lr * sign(dGQ/dalpha) for every tensor
    one = metainit(gain_mlp(0), batches, quiet(optimizer="adam", steps=1, lr=0.05), loss_fn=xent)
    assert all(a == pytest.approx(0.95) or a == pytest.approx(1.05) for a in one.scales.values())


def test_adam_variant_result_reapplies_and_keeps_bias_bounds(tmp_path):
    model = smooth_mlp(0)
    result = metainit(model, mlp_batches(2), quiet(optimizer="adam", steps=30, lr=0.5, min_scale=0.5), loss_fn=xent)
    # biases are bounded by 0 (the authors' choice), everything else by min_scale
    assert any(n.endswith("bias") and a < 0.5 for n, a in result.scales.items()), result.scales
    assert all(a >= 0.5 * (1 - 1e-6) for n, a in result.scales.items() if n.endswith("weight"))
    assert min(result.scales.values()) >= 0.0
    loaded = MetaInitResult.load(result.save(tmp_path / "adam.json"))
    fresh = apply_scales(smooth_mlp(0), loaded)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh.parameters(), strict=True))
    assert MetaInitConfig().lr == 0.1 and MetaInitConfig(optimizer="adam").lr == 1e-3


# --- random inputs -------------------------------------------------------------------------
def test_randomize_batch_keeps_structure():
    labels = torch.tensor([[4, 7, -100], [5, -100, -100]])
    batch = {
        "input_ids": torch.tensor([[3, 9, 5], [4, 6, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
        "labels": labels,
        "pixel_values": torch.ones(2, 3),
        "flags": torch.tensor([True, False]),
    }
    a = randomize_batch(batch, torch.Generator().manual_seed(0))
    b = randomize_batch(batch, torch.Generator().manual_seed(0))
    for k in batch:
        assert torch.equal(a[k], b[k]) and a[k].dtype == batch[k].dtype and a[k].shape == batch[k].shape
    assert torch.equal(a["attention_mask"], batch["attention_mask"]) and torch.equal(a["flags"], batch["flags"])
    assert int(a["input_ids"].min()) >= 0 and int(a["input_ids"].max()) <= 9
    assert torch.equal(a["labels"] == -100, labels == -100)
    kept = a["labels"][labels != -100]
    assert int(kept.min()) >= 4 and int(kept.max()) <= 7
    assert not torch.equal(a["pixel_values"], batch["pixel_values"])
    xs, ys = randomize_batch(mlp_batches(1)[0], torch.Generator().manual_seed(1))
    assert xs.dtype == torch.float64 and ys.dtype == torch.int64


def test_random_inputs_replace_the_data():
    batches = mlp_batches(2)
    real = metainit(smooth_mlp(0), batches, quiet(steps=2), loss_fn=xent)
    rand = metainit(smooth_mlp(0), batches, quiet(steps=2, random_inputs=True), loss_fn=xent)
    again = metainit(smooth_mlp(0), batches, quiet(steps=2, random_inputs=True), loss_fn=xent)
    assert real.history[0]["loss"] != rand.history[0]["loss"]
    assert [h["gq"] for h in rand.history] == [h["gq"] for h in again.history]
    assert rand.config["random_inputs"] is True


# --- result, re-apply, registry ------------------------------------------------------------
def test_result_reapplies_bit_for_bit_and_round_trips(tmp_path):
    model = tiny_marian(seed=4)
    result = metainit(model, reversal_batches(2, seed=4), quiet(steps=3, lr=0.01, hvp="finite_difference"))
    path = result.save(tmp_path / "metainit.json")
    loaded = MetaInitResult.load(path)
    assert loaded == result
    spec = get_initializer("metainit")
    for again in (result, spec.load_result(str(path))):
        fresh = tiny_marian(seed=4)
        spec.reapply(fresh, again)
        for (n, p), q in zip(model.named_parameters(), fresh.parameters(), strict=True):
            assert torch.equal(p, q), n
    fresh = apply_scales(tiny_marian(seed=4), result)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh.parameters(), strict=True))
    metrics = result.metrics(prefix="metainit/")
    assert metrics["metainit/steps"] == 3.0 and metrics["metainit/initial_gq"] == result.history[0]["gq"]
    assert {"metainit/final_gq", "metainit/scale_min", "metainit/scale_max", "metainit/seconds"} <= set(metrics)
    assert "gradient quotient" in result.summary(max_rows=3)
    with pytest.raises(ValueError, match=r"written by the initialiser 'gradinit', not 'metainit'"):
        (tmp_path / "other.json").write_text('{"format_version": 1, "scales": {}}')
        MetaInitResult.load(tmp_path / "other.json")


def test_half_precision_model_keeps_its_dtype():
    model = smooth_mlp(0, dtype=torch.bfloat16)
    batches = mlp_batches(2, dtype=torch.bfloat16)
    result = metainit(model, batches, quiet(steps=2), loss_fn=xent)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    fresh = apply_scales(smooth_mlp(0, dtype=torch.bfloat16), result)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh.parameters(), strict=True))


# --- failure safety and bad input ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["raise", "nan"])
def test_failure_mid_run_restores_model_modes_and_rng_exactly(kind):
    model = smooth_mlp(0)
    model[2].eval()
    batches = mlp_batches(3)
    calls = []

    def loss_fn(m, batch):
        calls.append(1)
        loss = xent(m, batch)
        if len(calls) > 6:  # a few steps in: the norms have moved
            if kind == "raise":
                raise RuntimeError("boom")
            loss = loss * float("nan")
        return loss

    before = snapshot(model)
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    with pytest.raises(GradInitError, match="restored"):
        metainit(model, batches, quiet(steps=10, hvp="finite_difference"), loss_fn=loss_fn)
    assert len(calls) > 6
    assert_same_state(model, before)
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)


def test_rng_seeded_inside_restored_outside():
    batches = mlp_batches(2)
    model = smooth_mlp(0)
    torch.manual_seed(7)
    rng = torch.get_rng_state()
    metainit(model, batches, quiet(steps=2, random_inputs=True), loss_fn=xent)
    assert torch.equal(torch.get_rng_state(), rng)


def test_bad_input_is_refused_before_any_work():
    model = smooth_mlp(0)
    before = snapshot(model)
    batches = mlp_batches(1)
    with pytest.raises(GradInitError, match=r"nn\.Module"):
        metainit("model", batches, quiet(), loss_fn=xent)
    with pytest.raises(GradInitError, match="MetaInitConfig"):
        metainit(model, batches, {"steps": 3}, loss_fn=xent)
    with pytest.raises(GradInitError, match=r"No tensor .* can be rescaled by MetaInit: .*fewer than 2 dimensions"):
        metainit(nn.LayerNorm(5).double(), batches, quiet(steps=1), loss_fn=lambda m, b: m(b[0]).sum())
    with pytest.raises(GradInitError, match="frozen"):
        metainit(smooth_mlp(0).requires_grad_(False), batches, quiet(), loss_fn=xent)
    with pytest.raises(GradInitError, match="no batch"):
        metainit(model, [], quiet(), loss_fn=xent)
    with pytest.raises(GradInitError, match="needs batches"):
        metainit(model, None, quiet(), loss_fn=xent)
    with pytest.raises(GradInitError, match="returned no loss"):
        metainit(model, [batches[0][0]], quiet(steps=1))  # logits, no loss
    with pytest.raises(GradInitError, match="first batch"):
        metainit(model, [(batches[0][0] * math.inf, batches[0][1])], quiet(steps=1), loss_fn=xent)
    assert_same_state(model, before)
    for bad in (
        dict(lr=0),
        dict(momentum=1.0),
        dict(steps=0),
        dict(eps=-1),
        dict(hvp="double"),
        dict(min_scale=-1),
        dict(min_scale=0.5, max_scale=0.1),
        dict(exclude=("(",)),
        dict(fd_eps=0.0),
        dict(optimizer="sgd"),
        dict(optimizer="adam", clip=-1),
        dict(betas=(0.9, 1.0)),
    ):
        with pytest.raises(ValueError):
            MetaInitConfig(**bad)


# --- several processes ---------------------------------------------------------------------
def _metainit_shard(rank: int) -> dict:
    batches = mlp_batches(3, seed=rank)  # each rank its own data
    result = metainit(smooth_mlp(0), batches, quiet(steps=6, lr=0.01, random_inputs=rank == 1), loss_fn=xent)
    return {"scales": result.scales, "history": result.history}


def test_two_processes_take_the_same_steps(tmp_path):
    """The norm gradients are averaged before the sign: both ranks end with the same norms,
    though their batches (and so their GQs) differ."""
    r0, r1 = run_on_two_ranks(tmp_path, _metainit_shard)
    assert r0["scales"] == r1["scales"]
    assert r0["history"][0]["gq"] == r1["history"][0]["gq"]  # the logged GQ is the mean over ranks
    alone = metainit(smooth_mlp(0), mlp_batches(3, seed=0), quiet(steps=6, lr=0.01), loss_fn=xent)
    assert alone.scales != r0["scales"]


def test_default_steps_are_a_runnable_100_and_the_bar_shows_the_cost(monkeypatch):
    import importlib

    from conftest import mlp_batches, smooth_mlp, xent

    from hf_gradinit import InitArguments

    driver = importlib.import_module("hf_gradinit.driver")  # the shared loop draws every initialiser's bar

    assert MetaInitConfig().steps == 100 and InitArguments().metainit_steps == 100
    shown = []

    class Bar(driver.tqdm):
        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            shown.append(dict(ordered_dict or {}))
            super().set_postfix(ordered_dict, refresh, **kwargs)

    monkeypatch.setattr(driver, "tqdm", Bar)
    metainit(smooth_mlp(), mlp_batches(2), MetaInitConfig(steps=3, lr=0.01), loss_fn=xent)
    assert len(shown) == 3 and all(float(p["s/step"]) >= 0 for p in shown)  # a tiny model rounds to 0.00
