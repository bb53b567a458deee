"""The first-step diagnostic: closed forms, nothing changed in the model, table, JSON, plot."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import reversal_batches, tiny_marian

from hf_gradinit.diagnostics import FirstStepReport, by_layer, first_step_report, plot_first_step


def linear_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(5, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 5, generator=g))
    x, y = torch.randn(7, 5, generator=g), torch.randn(7, 3, generator=g)

    def loss_fn(m, batch):
        return 0.5 * (m(batch[0]) - batch[1]).pow(2).sum()

    return model, (x, y), loss_fn


def test_sgd_and_adam_first_steps_match_their_closed_forms():
    model, batch, loss_fn = linear_problem()
    w = model.weight.detach().double()
    x, y = (t.double() for t in batch)
    grad = (x @ w.T - y).T @ x  # d/dW of 0.5 |xW^T - y|^2
    sgd = first_step_report(model, batch, lr=0.01, target="sgd", loss_fn=loss_fn).rows[0]
    assert sgd.grad_norm == pytest.approx(float(grad.norm()), rel=1e-5)
    assert sgd.update_norm == pytest.approx(0.01 * float(grad.norm()), rel=1e-5)
    assert sgd.relative_update == pytest.approx(0.01 * float(grad.norm() / w.norm()), rel=1e-5)
    normalised = first_step_report(model, batch, lr=0.01, target="sgd", loss_fn=loss_fn, normalize_step=True)
    assert normalised.rows[0].update_norm == pytest.approx(0.01, rel=1e-6)
    adam = first_step_report(model, batch, lr=1e-3, target="adam", loss_fn=loss_fn).rows[0]
    assert adam.update_norm == pytest.approx(1e-3 * math.sqrt(15), rel=1e-9)
    assert adam.grad_norm_l1 == pytest.approx(float(grad.abs().sum()), rel=1e-5)
    adamw = first_step_report(model, batch, lr=1e-3, target="adamw", loss_fn=loss_fn, weight_decay=0.1).rows[0]
    expected = 1e-3 * float((torch.sign(grad) + 0.1 * w).norm())
    assert adamw.update_norm == pytest.approx(expected, rel=1e-6)


def test_rescaling_a_tensor_by_alpha_divides_adams_relative_step_by_alpha():
    model, batch, loss_fn = linear_problem()
    before = first_step_report(model, batch, lr=1e-3, loss_fn=loss_fn).rows[0]
    with torch.no_grad():
        model.weight.mul_(0.25)
    after = first_step_report(model, batch, lr=1e-3, loss_fn=loss_fn).rows[0]
    assert after.relative_update / before.relative_update == pytest.approx(4.0, rel=1e-6)


def test_the_model_is_left_exactly_as_it_was():
    model = tiny_marian(seed=0)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    report = first_step_report(model, reversal_batches(1)[0], lr=5e-4, train_mode=True)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    # One row per distinct trainable tensor: the tied embedding once, frozen positions none.
    names = [r.name for r in report.rows]
    assert len(names) == len(set(names)) and not any("embed_positions" in n for n in names)
    assert "model.shared.weight" in names and "lm_head.weight" not in names


def test_table_json_and_plot(tmp_path):
    model = tiny_marian(seed=0, layers=3)
    batch = reversal_batches(1)[0]
    base = first_step_report(model, batch, lr=1e-3, label="base")
    with torch.no_grad():
        model.model.decoder.layers[1].self_attn.v_proj.weight.mul_(0.1)
    after = first_step_report(model, batch, lr=1e-3, label="after")
    layered = by_layer(after)
    assert set(layered) == {"encoder", "decoder"}
    v = dict((layer, rel) for layer, rel, _ in layered["decoder"]["self_attn.v_proj.weight"])
    v0 = dict((layer, rel) for layer, rel, _ in by_layer(base)["decoder"]["self_attn.v_proj.weight"])
    assert sorted(v) == [0, 1, 2] and v[1] == pytest.approx(10 * v0[1], rel=1e-3)
    table = after.table(max_rows=5, sort=True)
    assert table.splitlines()[4].startswith("| model.decoder.layers.1.self_attn.v_proj.weight |")
    assert "more" in table.splitlines()[-1]
    after.save(tmp_path / "r.json")
    loaded = FirstStepReport.load(tmp_path / "r.json")
    assert loaded.rows == after.rows and loaded.label == "after"
    png = plot_first_step([base, after], tmp_path / "r.png")
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_bad_arguments_say_what_to_change():
    model, batch, loss_fn = linear_problem()
    with pytest.raises(ValueError, match="target must be"):
        first_step_report(model, batch, lr=1e-3, target="rmsprop", loss_fn=loss_fn)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr must be"):
        first_step_report(model, batch, lr=0.0, loss_fn=loss_fn)
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        first_step_report(frozen, batch, lr=1e-3, loss_fn=loss_fn)
