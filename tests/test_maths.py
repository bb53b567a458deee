"""The maths of GradInit against independent definitions: finite differences and closed forms."""

from __future__ import annotations

import pytest
import torch
from conftest import mlp_batches, reversal_batches, smooth_mlp, tiny_marian, xent
from torch import nn
from torch.func import functional_call

from hf_gradinit import GradInitConfig, gradinit
from hf_gradinit.batches import split_batch
from hf_gradinit.functional import LossEvaluator, grad_norm
from hf_gradinit.methods.gradinit.objective import (
    constraint_scale_gradient,
    hvp_exact,
    hvp_finite_difference,
    norm_direction,
    objective_scale_gradient,
    scale_gradients,
)
from hf_gradinit.scales import trainable_parameters

ETA = 0.05


def _problem(seed: int = 0):
    model = smooth_mlp(seed)
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    theta0 = [p.detach().clone() for p in params]
    alpha0 = torch.linspace(0.7, 1.3, len(params), dtype=torch.float64)
    with torch.no_grad():
        for p, t, a in zip(params, theta0, alpha0, strict=True):
            p.copy_(a * t)
    s, s_tilde = split_batch(mlp_batches(1, batch_size=12, seed=seed)[0], 0.5)
    return model, names, params, theta0, alpha0, s, s_tilde


def _loss_at(model, names, values, batch):
    return xent_functional(model, dict(zip(names, values, strict=True)), batch)


def xent_functional(model, params, batch):
    return nn.functional.cross_entropy(functional_call(model, params, (batch[0],)), batch[1])


def _central_difference(f, alpha: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    out = torch.zeros_like(alpha)
    for i in range(len(alpha)):
        up, down = alpha.clone(), alpha.clone()
        up[i] += h
        down[i] -= h
        out[i] = (f(up) - f(down)) / (2 * h)
    return out


@pytest.mark.parametrize(
    ("target", "normalize", "weight_decay"),
    [("sgd", False, 0.0), ("sgd", True, 0.0), ("adam", False, 0.0), ("adam", False, 0.1), ("adamw", False, 0.1)],
)
def test_objective_scale_gradient_matches_finite_differences(target, normalize, weight_decay):
    model, names, params, theta0, alpha0, s, s_tilde = _problem()
    config = GradInitConfig(target=target, eta=ETA, normalize_step=normalize, weight_decay=weight_decay).resolve()

    # Independent statement of the objective: the virtual step A[g] is computed once at
    # alpha0 and then held constant (the paper's first-order objective step).
    g = torch.autograd.grad(xent(model, s), params)
    theta = [p.detach() for p in params]
    if target == "sgd":
        norm = torch.sqrt(sum((x**2).sum() for x in g))
        step = [x / norm for x in g] if normalize else list(g)
    elif target == "adam":
        step = [torch.sign(x + weight_decay * t) for x, t in zip(g, theta, strict=True)]
    else:
        step = [torch.sign(x) for x in g]
    decay = 1.0 if target == "adam" else 1.0 - ETA * weight_decay

    def objective(alpha):
        values = [decay * a * t - ETA * st for a, t, st in zip(alpha, theta0, step, strict=True)]
        return _loss_at(model, names, values, s_tilde) / ETA

    expected = _central_difference(objective, alpha0)

    ev = LossEvaluator(model, names, params, xent)
    _, grads = ev.grad(s)
    gnorm = grad_norm(grads, config.norm_order)
    lookahead, got = objective_scale_gradient(ev, s_tilde, grads, gnorm, theta0, range(len(params)), config)
    assert lookahead == pytest.approx(float(objective(alpha0)) * ETA, rel=1e-12)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("target", ["sgd", "adam"])
@pytest.mark.parametrize(
    ("hvp", "scheme"), [("exact", "forward"), ("finite_difference", "forward"), ("finite_difference", "central")]
)
def test_constraint_scale_gradient_matches_finite_differences(target, hvp, scheme):
    model, names, params, theta0, alpha0, s, _ = _problem(seed=1)
    config = GradInitConfig(target=target, eta=ETA, hvp=hvp, fd_scheme=scheme).resolve()
    p = config.norm_order

    def grad_norm_at(alpha):
        leaves = [(a * t).requires_grad_() for a, t in zip(alpha, theta0, strict=True)]
        g = torch.autograd.grad(_loss_at(model, names, leaves, s), leaves)
        flat = torch.cat([x.reshape(-1) for x in g])
        return flat.abs().sum() if p == 1 else flat.norm()

    expected = _central_difference(grad_norm_at, alpha0)
    ev = LossEvaluator(model, names, params, xent)
    _, grads = ev.grad(s)
    got = constraint_scale_gradient(ev, s, grads, grad_norm(grads, p), theta0, range(len(params)), config)
    torch.testing.assert_close(got, expected, rtol=1e-6 if hvp == "exact" else 1e-5, atol=1e-9)


def test_scale_gradients_only_for_scaled_subset():
    """Unscaled tensors still move in the virtual step but get no scale gradient."""
    model, names, params, theta0, _, s, s_tilde = _problem()
    config = GradInitConfig(target="sgd", eta=ETA).resolve()
    ev = LossEvaluator(model, names, params, xent)
    start = [p.detach().clone() for p in params]
    _, grads = ev.grad(s)
    full = objective_scale_gradient(ev, s_tilde, list(grads), grad_norm(grads, 2), theta0, range(len(params)), config)
    # The step leaves the parameters at theta' (the engine resets them): restore by hand.
    with torch.no_grad():
        torch._foreach_copy_(params, start)
    subset = objective_scale_gradient(ev, s_tilde, list(grads), grad_norm(grads, 2), theta0[1:3], [1, 2], config)
    torch.testing.assert_close(subset[1], full[1][1:3])


# Measured on this model: forward 1.1e-2 / 4.6e-3 (p = 1 / 2), central 8e-4 / 1.2e-3; a
# step ten times too large or too small breaks these bounds.
@pytest.mark.parametrize(("scheme", "bound"), [("forward", 0.025), ("central", 0.005)])
def test_finite_difference_hvp_matches_exact_float32_marian(scheme, bound):
    """In float32 on a real (ReLU, LayerNorm, attention) model, the default step size keeps
    the finite-difference scale gradient (the product projected on each tensor, what
    GradInit uses) within ``bound`` (relative, over all tensors) of the double-backward one."""
    model = tiny_marian(seed=3, dropout=0.0).eval()
    infos = trainable_parameters(model)
    ev = LossEvaluator(model, [i.name for i in infos], [i.param for i in infos], None)
    theta = [q.detach().clone() for q in ev.params]
    batch = reversal_batches(1, batch_size=8, seed=3)[0]
    for p in (1, 2):
        _, grads = ev.grad(batch)
        direction = norm_direction(grads, grad_norm(grads, p), p)
        exact = hvp_exact(ev, batch, direction)
        base = grads if scheme == "forward" else None
        approx = hvp_finite_difference(ev, batch, direction, grad_at_theta=base)
        with torch.no_grad():
            torch._foreach_copy_(ev.params, theta)  # the difference moved them
        proj_exact = scale_gradients(exact, theta)
        proj_fd = scale_gradients(approx, theta)
        rel = float((proj_fd - proj_exact).norm() / proj_exact.norm())
        assert rel < bound, f"p={p}, {scheme}: finite-difference scale gradient off by {rel:.4f} (relative)"


def test_scale_gradients_match_float64_dot_products():
    """The batched per-tensor sums are float64-accurate, better than a float32 vdot."""
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(n, generator=gen) for n in (3, 64, 4096, 100_000)]
    theta = [torch.randn(g.shape, generator=gen) for g in grads]
    expected = torch.stack([torch.vdot(g.double(), t.double()) for g, t in zip(grads, theta, strict=True)])
    got = scale_gradients([g.clone() for g in grads], theta)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)


# --- closed form ---------------------------------------------------------------------------
# One weight w, squared loss 0.5 * (w x - y)^2 on identical samples, so S and S~ agree and the
# one-step objective has a known optimum. Minimiser of the loss: w* = y / x.
X, Y, W0 = 1.0, 0.5, 2.0


def _one_weight_model() -> nn.Module:
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(W0)
    return model


def _square_loss(model, batch):
    x, y = batch
    return 0.5 * ((model(x).squeeze(-1) - y) ** 2).mean()


@pytest.mark.parametrize(
    ("target", "normalize", "weight_decay", "expected_w"),
    [
        # plain SGD: theta' = w - eta (w x - y) x lands on y / x exactly when w = y / x.
        ("sgd", False, 0.0, Y / X),
        # a step of fixed length eta (normalised SGD; Adam's sign step) lands on the
        # minimiser from w = y/x + eta: the learned weight sits eta beyond it.
        ("sgd", True, 0.0, Y / X + 0.1),
        ("adam", False, 0.0, Y / X + 0.1),
        # AdamW: (1 - eta wd) w - eta = y / x.
        ("adamw", False, 0.5, (Y / X + 0.1) / (1 - 0.1 * 0.5)),
    ],
)
def test_closed_form_one_weight(target, normalize, weight_decay, expected_w, quiet):
    model = _one_weight_model()
    batch = (torch.full((6, 1), X, dtype=torch.float64), torch.full((6,), Y, dtype=torch.float64))
    config = quiet(
        target=target,
        eta=0.1,
        normalize_step=normalize,
        weight_decay=weight_decay,
        gamma=1e9,
        iters=600,
        lr=0.01,
        clip=0.0,
        betas=(0.9, 0.999),
    )
    result = gradinit(model, [batch], config, loss_fn=_square_loss)
    assert result.num_constraint_steps == 0
    assert float(model.weight.detach()) == pytest.approx(expected_w, abs=5e-3)
    assert result.scales["weight"] == pytest.approx(expected_w / W0, abs=5e-3 / W0)
    # The step the target optimizer takes from there lands on the minimiser.
    assert result.history[-1]["lookahead_loss"] < 1e-4


def test_constraint_steps_bring_gradient_norm_under_gamma(quiet):
    """With gamma below the initial gradient norm, constraint steps pull it under gamma."""
    model = _one_weight_model()
    batch = (torch.full((6, 1), X, dtype=torch.float64), torch.full((6,), Y, dtype=torch.float64))
    g0 = abs((W0 * X - Y) * X)  # 1.5
    config = quiet(target="sgd", eta=0.1, normalize_step=False, gamma=0.5, iters=300, lr=0.01, clip=0.0)
    result = gradinit(model, [batch], config, loss_fn=_square_loss)
    assert result.history[0]["kind"] == "constraint" and result.history[0]["grad_norm"] == pytest.approx(g0)
    assert result.num_objective_steps > 0
    assert abs((float(model.weight.detach()) * X - Y) * X) <= 0.5 + 0.02


def test_input_only_tied_lookahead_matches_finite_differences_of_the_authors_objective():
    """tied_lookahead='input_only': the embedding moves, the tied output projection reads theta(alpha)."""
    torch.manual_seed(0)
    model = tiny_marian(seed=0, layers=1, d_model=16, vocab=24, dropout=0.0).double().eval()
    infos = trainable_parameters(model)
    names, params = [i.name for i in infos], [i.param for i in infos]
    tied = next(j for j, p in enumerate(params) if p is model.lm_head.weight)
    aliases = [n for n, p in model.named_parameters(remove_duplicate=False) if p is params[tied]]
    assert "lm_head.weight" in aliases and len(aliases) > 1
    theta0 = [p.detach().clone() for p in params]
    alpha0 = torch.linspace(0.8, 1.2, len(params), dtype=torch.float64)
    with torch.no_grad():
        for p, t, a in zip(params, theta0, alpha0, strict=True):
            p.copy_(a * t)
    batch = {k: v[:6] for k, v in reversal_batches(1, vocab=24)[0].items()}
    s, s_tilde = split_batch(batch, 0.5)
    config = GradInitConfig(target="adam", eta=ETA).resolve()
    step = [torch.sign(x) for x in torch.autograd.grad(model(**s).loss, params)]

    def objective(alpha):
        moved = [a * t - ETA * st for a, t, st in zip(alpha, theta0, step, strict=True)]
        values = dict(zip(names, moved, strict=True))
        values.update({n: moved[tied] for n in aliases})
        values["lm_head.weight"] = alpha[tied] * theta0[tied]  # the output projection does not move
        return functional_call(model, values, (), s_tilde, tie_weights=False, strict=False).loss / ETA

    expected = _central_difference(objective, alpha0)
    ev = LossEvaluator(model, names, params, None)
    _, grads = ev.grad(s)
    gnorm = grad_norm(grads, 1)
    lookahead, got = objective_scale_gradient(
        ev, s_tilde, grads, gnorm, theta0, range(len(params)), config, held=(model.lm_head, tied)
    )
    assert model.lm_head.weight is params[tied]  # the tie is back after the evaluation
    assert lookahead == pytest.approx(float(objective(alpha0)) * ETA, rel=1e-10)
    # The objective is ~60 here, so central differences carry ~1e-8 of round-off.
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=3e-8)
    assert float(got[tied]) == pytest.approx(float(expected[tied]), rel=1e-6)
    # Against the default (the tensor moves everywhere), only the tied scale's gradient differs.
    with torch.no_grad():
        for p, t, a in zip(params, theta0, alpha0, strict=True):
            p.copy_(a * t)
    _, grads = ev.grad(s)
    _, got_all = objective_scale_gradient(ev, s_tilde, grads, gnorm, theta0, range(len(params)), config)
    assert abs(float(got_all[tied] - got[tied])) > 1e-3 * abs(float(got[tied]))


def test_input_only_tied_lookahead_end_to_end_and_refused_without_a_tie(quiet):
    model = tiny_marian(seed=0)
    batches = reversal_batches(3)
    config = GradInitConfig(target="adam", eta=1e-3, iters=4, gamma=1e9, tied_lookahead="input_only", lr=0.05)
    result = gradinit(model, batches, config)
    assert model.lm_head.weight is model.model.shared.weight
    default = gradinit(tiny_marian(seed=0), batches, GradInitConfig(target="adam", eta=1e-3, iters=4, gamma=1e9,
                                                                     lr=0.05))  # fmt: skip
    assert result.scales["model.shared.weight"] != default.scales["model.shared.weight"]
    untied = smooth_mlp(0)
    before = [p.detach().clone() for p in untied.parameters()]
    with pytest.raises(Exception, match="tied_lookahead='input_only' needs an output projection"):
        gradinit(untied, mlp_batches(2), GradInitConfig(target="adam", eta=1e-3, iters=2, tied_lookahead="input_only"),
                 loss_fn=xent)  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(before, untied.parameters(), strict=True))
    with pytest.raises(ValueError, match="tied_lookahead must be one of"):
        GradInitConfig(tied_lookahead="output")  # type: ignore[arg-type]
