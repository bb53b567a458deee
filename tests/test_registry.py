"""The initialiser registry: every registered name reaches the 🤗 Trainer the same way."""

from __future__ import annotations

import copy
import dataclasses
from typing import Literal

import pytest
import torch
from conftest import reversal_batches, tiny_marian
from test_trainer import WeightsAtStart, parse, reversal_dataset, training_args
from transformers import Seq2SeqTrainer

from hf_gradinit import (
    GradInitConfig,
    GradInitResult,
    InitializerCallback,
    LSUVConfig,
    LSUVResult,
    MetaInitConfig,
    MetaInitResult,
    available_initializers,
    get_initializer,
    make_model_init,
    register_initializer,
    trainer_init_kwargs,
)
from hf_gradinit.config import InitConfig
from hf_gradinit.registry import _REGISTRY

pytestmark = pytest.mark.usefixtures("one_thread")


# Quick settings for each initialiser (name -> (config, result type, metric that must be logged)).
CASES = {
    "default": (None, type(None), None),
    "gradinit": (GradInitConfig(iters=2, gamma=1e6, show_progress=False), GradInitResult, "gradinit/iterations"),
    "lsuv": (LSUVConfig(show_progress=False), LSUVResult, "lsuv/layers"),
    "metainit": (MetaInitConfig(steps=2, lr=0.01, show_progress=False), MetaInitResult, "metainit/final_gq"),
}


def same_weights(a: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    return all(torch.equal(a[n], p.detach()) for n, p in model.named_parameters())


def test_the_four_initialisers_are_registered_with_one_convention():
    names = available_initializers()
    assert names[0] == "default" and {"gradinit", "lsuv", "metainit"} <= set(names)
    for name in ("lsuv", "metainit"):
        spec = get_initializer(name)
        assert spec.needs_data and spec.result_class is not None and spec.can_reapply
        assert spec.config_class is type(CASES[name][0]) and spec.description


@pytest.mark.parametrize("name", list(CASES))
def test_callback_route_reaches_each_initialiser(tmp_path, name):
    config, result_type, metric = CASES[name]
    model = tiny_marian(seed=0)
    initial = copy.deepcopy(model)
    callback = InitializerCallback(name, config)
    probe = WeightsAtStart()
    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args(tmp_path, max_steps=1),
        train_dataset=reversal_dataset(),
        callbacks=[callback, probe],
    )
    trainer.train()
    assert isinstance(callback.result, result_type)
    assert trainer.state.global_step == 1
    if name == "default":
        assert same_weights(probe.weights, initial)
        return
    # The weights training started from are the initial ones with the result re-applied.
    assert not same_weights(probe.weights, initial)
    get_initializer(name).reapply(initial, callback.result)
    assert same_weights(probe.weights, initial)
    logged = [h for h in trainer.state.log_history if metric in h]
    assert len(logged) == 1


@pytest.mark.parametrize("name", list(CASES))
def test_model_init_route_reaches_each_initialiser(tmp_path, name):
    config, result_type, _ = CASES[name]
    args = training_args(tmp_path, max_steps=1)
    model_init = make_model_init(
        lambda: tiny_marian(seed=1), reversal_batches(2, seed=1), config, initializer=name, training_args=args
    )
    probe = WeightsAtStart()
    trainer = Seq2SeqTrainer(model_init=model_init, args=args, train_dataset=reversal_dataset(), callbacks=[probe])
    trainer.train()
    # The Trainer called model_init twice; the initialiser ran once and was re-applied after.
    assert model_init.computed == (0 if name == "default" else 1)
    fresh = tiny_marian(seed=1)
    if name == "default":
        assert same_weights(probe.weights, fresh)
        return
    (result,) = model_init.results.values()
    assert isinstance(result, result_type)
    assert not same_weights(probe.weights, fresh)
    get_initializer(name).reapply(fresh, result)
    assert same_weights(probe.weights, fresh)


def test_command_line_reaches_lsuv_and_its_saved_result(tmp_path):
    """--model_init lsuv --save_init_scales true, then --init_scales_file: the same weights."""
    args, init = parse(
        tmp_path, "--model_init", "lsuv", "--save_init_scales", "true", "--max_steps", "1",
        "--per_device_train_batch_size", "6", "--report_to", "none",
    )  # fmt: skip
    assert isinstance(init.initializer_config(), LSUVConfig)
    first = WeightsAtStart()
    kwargs = trainer_init_kwargs(init, args, model=tiny_marian(seed=2))
    kwargs["callbacks"].append(first)  # after the initialiser's callback
    Seq2SeqTrainer(args=args, train_dataset=reversal_dataset(), **kwargs).train()
    saved = tmp_path / "init_scales.json"
    assert saved.is_file() and (tmp_path / "init_scales.safetensors").is_file()

    _, reuse = parse(tmp_path, "--model_init", "lsuv", "--init_scales_file", str(saved))
    second = WeightsAtStart()
    kwargs = trainer_init_kwargs(reuse, args, model=tiny_marian(seed=2))
    kwargs["callbacks"].append(second)
    Seq2SeqTrainer(args=args, train_dataset=reversal_dataset(), **kwargs).train()
    assert second.weights.keys() == first.weights.keys()
    assert all(torch.equal(first.weights[n], second.weights[n]) for n in first.weights)
    assert not same_weights(first.weights, tiny_marian(seed=2))

    _, meta = parse(tmp_path, "--model_init", "metainit")
    assert isinstance(meta.initializer_config(), MetaInitConfig)


@pytest.fixture
def halve_registered():
    """A user's own initialiser, registered for one test and removed after it."""
    calls: list[dict] = []

    @register_initializer("halve_linears", description="halves every linear weight")
    def halve(model, data, config, *, loss_fn=None, distributed=None):
        calls.append({"config": config, "has_data": data is not None})
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.Linear) and module.weight.requires_grad:
                    module.weight.mul_(config["factor"])
        return None

    yield calls
    del _REGISTRY["halve_linears"]


def test_a_user_registered_initialiser_reaches_the_trainer(tmp_path, halve_registered):
    assert "halve_linears" in available_initializers()
    model = tiny_marian(seed=3)
    initial = copy.deepcopy(model)
    probe = WeightsAtStart()
    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args(tmp_path, max_steps=1),
        train_dataset=reversal_dataset(),
        callbacks=[InitializerCallback("halve_linears", {"factor": 0.5}), probe],
    )
    trainer.train()
    assert halve_registered == [{"config": {"factor": 0.5}, "has_data": True}]
    expected = initial.model.encoder.layers[0].fc1.weight.detach() * 0.5
    assert torch.equal(probe.weights["model.encoder.layers.0.fc1.weight"], expected)
    # Through the command-line choices too, since they are read from the live registry.
    _, init = parse(tmp_path, "--model_init", "halve_linears")
    assert init.model_init == "halve_linears"


def test_registering_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_initializer("lsuv")(lambda *a, **k: None)


@dataclasses.dataclass
class ShrinkConfig(InitConfig):
    factor: float = dataclasses.field(default=0.5, metadata={"help": "Multiply every weight by this."})
    mode: Literal["all", "last"] = dataclasses.field(default="all", metadata={"help": "Which layers."})
    exclude: tuple[str, ...] = dataclasses.field(default_factory=tuple, metadata={"help": "Names to skip."})
    seed: int = dataclasses.field(default=0, metadata={"help": "Seed."})
    show_progress: bool = dataclasses.field(default=True, metadata={"cli": False})

    def validate(self) -> None:
        self.checked_number("factor", low=0.0)


def test_a_new_methods_config_becomes_command_line_options(capsys):
    """--<name>_<field> options, help text and choices come from the config's fields, so a new
    method needs no change to the arguments module; the built-in flags keep their names."""
    import dataclasses

    from transformers import HfArgumentParser

    from hf_gradinit.trainer.arguments import InitArguments, build_init_arguments

    register_initializer("shrink", needs_data=False, config_class=ShrinkConfig)(lambda *a, **k: None)
    try:
        cls = build_init_arguments()
        names = {f.name for f in dataclasses.fields(cls)}
        assert {"shrink_factor", "shrink_mode", "shrink_exclude", "shrink_seed"} <= names
        assert "shrink_show_progress" not in names
        assert {f.name for f in dataclasses.fields(InitArguments)} <= names  # every existing flag kept
        parser = HfArgumentParser(cls)
        (args,) = parser.parse_args_into_dataclasses(
            ["--model_init", "shrink", "--shrink_factor", "0.25", "--shrink_mode", "last", "--shrink_exclude", "a.*"]
        )
        assert args.initializer_config() == ShrinkConfig(factor=0.25, mode="last", exclude=("a.*",))
        assert "Multiply every weight by this." in parser.format_help()
        with pytest.raises(SystemExit):
            parser.parse_args_into_dataclasses(["--shrink_mode", "first"])
        assert "invalid choice: 'first'" in capsys.readouterr().err
        (args,) = parser.parse_args_into_dataclasses(["--model_init", "shrink", "--shrink_factor", "-1"])
        with pytest.raises(ValueError, match=r"--shrink_factor must be a finite number > 0"):
            args.validate()
    finally:
        del _REGISTRY["shrink"]
