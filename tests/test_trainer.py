"""The 🤗 Trainer integration: callback, model_init, command-line arguments."""

from __future__ import annotations

import copy
import glob
import math
import warnings

import pytest
import torch
from conftest import SmallCNN, reversal_batches, tiny_marian
from torch.utils.data import Dataset
from transformers import (
    HfArgumentParser,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from hf_gradinit import (
    GradInitCallback,
    GradInitConfig,
    GradInitError,
    GradInitResult,
    InitArguments,
    InitializerCallback,
    apply_scales,
    make_model_init,
    trainer_init_kwargs,
)
from hf_gradinit.trainer import initializer_result, target_for_optim


class ListDataset(Dataset):
    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def reversal_dataset(n_batches: int = 8, seed: int = 0) -> ListDataset:
    """Single examples of the reversal task (fixed length, so the default collator stacks them)."""
    from transformers.models.marian.modeling_marian import shift_tokens_right

    rows = []
    for batch in reversal_batches(n_batches, batch_size=6, seed=seed):
        # As DataCollatorForSeq2Seq(model=...) does: the Trainer pops labels when it smooths them.
        batch["decoder_input_ids"] = shift_tokens_right(batch["labels"], 0, 0)
        for i in range(6):
            rows.append({k: v[i] for k, v in batch.items()})
    return ListDataset(rows)


def image_dataset(n: int = 48) -> ListDataset:
    g = torch.Generator().manual_seed(0)
    return ListDataset(
        [
            {"pixel_values": torch.randn(3, 8, 8, generator=g), "labels": int(torch.randint(0, 4, (1,), generator=g))}
            for _ in range(n)
        ]
    )


def training_args(tmp_path, cls=Seq2SeqTrainingArguments, **kwargs) -> TrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=6,
        learning_rate=5e-3,
        max_steps=3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    defaults.update(kwargs)
    return cls(**defaults)


class WeightsAtStart(TrainerCallback):
    """Records the weights at on_train_begin, after the callbacks before it ran."""

    def __init__(self):
        self.weights: dict[str, torch.Tensor] | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights = {n: p.detach().clone() for n, p in model.named_parameters()}


def quick(**kwargs) -> GradInitConfig:
    kwargs.setdefault("iters", 4)
    kwargs.setdefault("show_progress", False)
    return GradInitConfig(**kwargs)


# --- the callback --------------------------------------------------------------------------
def test_seq2seq_trainer_with_callback(tmp_path):
    model = tiny_marian(seed=0)
    initial = copy.deepcopy(model)
    callback = GradInitCallback(quick(lr=5e-2, gamma=1e6))
    probe = WeightsAtStart()
    args = training_args(tmp_path, optim="adamw_torch")
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=reversal_dataset(), callbacks=[callback, probe])
    trainer.train()

    result = callback.result
    assert isinstance(result, GradInitResult) and result.iterations == 4
    # GradInit modelled the optimizer the run trains with.
    assert result.config["eta"] == 5e-3 and result.config["target"] == "adamw"
    # At step 0 the weights are exactly the initial weights rescaled as the result says.
    apply_scales(initial, result)
    for name, value in initial.named_parameters():
        assert torch.equal(probe.weights[name], value.detach()), name
    assert any(result.scales[n] != 1.0 for n in result.scales)
    # Metrics landed in log_history, and training went on.
    logged = [h for h in trainer.state.log_history if "gradinit/iterations" in h]
    assert len(logged) == 1 and logged[0]["gradinit/iterations"] == 4.0
    assert {"gradinit/final_grad_norm", "gradinit/scale_weight_mean", "gradinit/seconds"} <= set(logged[0])
    assert trainer.state.global_step == 3
    assert sum("loss" in h for h in trainer.state.log_history) >= 3


def test_activation_checkpointing_is_off_during_gradinit_and_back_after(tmp_path):
    """With activation checkpointing on (the Trainer turns it on before callbacks run), the
    callback learns the same scales as without it, and checkpointing is on again for training.
    (test_engine checks that the switch is off while GradInit runs.)"""
    scales, flags = [], []
    for checkpointing in (False, True):
        callback = GradInitCallback(quick(lr=5e-2, gamma=1e6))
        args = training_args(tmp_path, optim="adamw_torch", activation_checkpointing=checkpointing, max_steps=1)
        model = tiny_marian(seed=0)
        Seq2SeqTrainer(model=model, args=args, train_dataset=reversal_dataset(), callbacks=[callback]).train()
        scales.append(callback.result.scales)
        flags.append(model.is_activation_checkpointing)
    assert flags == [False, True]  # on again after GradInit, for the training steps
    assert scales[0] == scales[1]


class DoubledLossTrainer(Seq2SeqTrainer):
    """A Trainer subclass with its own training loss (as label smoothing or a custom
    compute_loss would give)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return 2.0 * super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def test_callback_models_the_trainers_own_loss(tmp_path):
    """Attached, the callback uses the Trainer's compute_loss (a subclass's override included);
    unattached, it rebuilds the Trainer's default loss from the arguments (label smoothing)."""
    from hf_gradinit.trainer import attach_trainer

    losses = {}
    for cls, attach in ((Seq2SeqTrainer, False), (Seq2SeqTrainer, True), (DoubledLossTrainer, True)):
        callback = GradInitCallback(quick(iters=1, gamma=1e6))
        args = training_args(tmp_path, max_steps=1, label_smoothing_factor=0.1)
        trainer = cls(model=tiny_marian(seed=1), args=args, train_dataset=reversal_dataset(), callbacks=[callback])
        if attach:
            attach_trainer(trainer)
        assert (callback.trainer is trainer) == attach
        trainer.train()
        losses[cls, attach] = callback.result.history[0]["loss"]
    assert losses[Seq2SeqTrainer, False] == pytest.approx(losses[Seq2SeqTrainer, True], rel=1e-6)
    assert losses[DoubledLossTrainer, True] == pytest.approx(2 * losses[Seq2SeqTrainer, True], rel=1e-6)


def test_the_unattached_default_loss_is_the_trainers_compute_loss(tmp_path):
    from hf_gradinit.trainer.callback import _args_loss_fn

    model = tiny_marian(seed=1)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(40.0)  # peaked logits, where label smoothing matters
    batch = {k: torch.stack([row[k] for row in reversal_dataset(1)]) for k in reversal_dataset(1)[0]}
    args = training_args(tmp_path, label_smoothing_factor=0.1)
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=reversal_dataset())
    model.eval()
    ours = _args_loss_fn(args)(model, dict(batch))
    theirs = trainer.compute_loss(model, dict(batch))
    plain = model(**batch).loss
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)
    assert abs(float(ours) - float(plain)) > 1e-3 * float(plain)  # the smoothing is really in it
    assert _args_loss_fn(training_args(tmp_path)) is None  # no smoothing: the model's own loss


def test_callback_reaches_tensorboard(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    args = training_args(tmp_path, report_to=["tensorboard"], max_steps=1)
    trainer = Seq2SeqTrainer(model=tiny_marian(seed=2), args=args, train_dataset=reversal_dataset())
    GradInitCallback(quick()).attach(trainer)  # trainer.log() is what reaches report_to
    trainer.train()
    scalars, histograms = _tensorboard_tags(tmp_path / "tb")
    assert "train/gradinit/iterations" in scalars or "gradinit/iterations" in scalars, scalars
    # the learned scales themselves: histograms, and per part and kind a series over the layers
    assert {"gradinit/scales", "gradinit/log10_scales"} <= histograms, histograms
    series = EventAccumulator(_events(tmp_path / "tb")[0])
    series.Reload()
    by_layer = series.Scalars("gradinit/scale_by_layer/decoder/self_attn.v_proj.weight")
    scales = initializer_result(trainer).scales
    assert [e.step for e in by_layer] == [0, 1]
    for e in by_layer:
        assert e.value == pytest.approx(scales[f"model.decoder.layers.{e.step}.self_attn.v_proj.weight"], rel=1e-6)
    assert "gradinit/scale_by_layer/encoder/all" in scalars


def _events(folder):
    return sorted(glob.glob(str(folder / "**" / "events.out.tfevents.*"), recursive=True))


def _tensorboard_tags(folder) -> tuple[set, set]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, histograms = set(), set()
    for path in _events(folder):
        acc = EventAccumulator(path)
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
        histograms |= set(acc.Tags()["histograms"])
    return scalars, histograms


def test_callback_prints_one_line_and_writes_its_own_tensorboard_log_when_unattached(tmp_path, capsys):
    # Not attached: no Trainer to reach its TensorBoard writer, so the callback opens its own
    # beside it; the one-line summary reaches the console whatever the logging level.
    pytest.importorskip("tensorboard")
    args = training_args(tmp_path, report_to=["tensorboard"], max_steps=1)
    callback = GradInitCallback(quick())
    Seq2SeqTrainer(model=tiny_marian(seed=2), args=args, train_dataset=reversal_dataset(), callbacks=[callback]).train()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[hf_gradinit]")]
    assert lines == [f"[hf_gradinit] {callback.result.headline()}"]
    assert "objective" in lines[0] and "constraint" in lines[0] and "scales" in lines[0]
    _, histograms = _tensorboard_tags(tmp_path / "out" / "runs" / "hf_gradinit")
    assert "gradinit/scales" in histograms


@pytest.mark.parametrize("disable_tqdm", [True, False])
def test_every_methods_progress_bar_follows_disable_tqdm(tmp_path, capsys, disable_tqdm):
    args = training_args(tmp_path, max_steps=1, disable_tqdm=disable_tqdm)
    callback = InitializerCallback("lsuv")
    Seq2SeqTrainer(model=tiny_marian(seed=2), args=args, train_dataset=reversal_dataset(), callbacks=[callback]).train()
    assert ("LSUV:" in capsys.readouterr().err) is not disable_tqdm


def test_callback_not_run_again_on_resume(tmp_path):
    args = training_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    first = GradInitCallback(quick())
    Seq2SeqTrainer(model=tiny_marian(seed=3), args=args, train_dataset=reversal_dataset(), callbacks=[first]).train()
    assert first.result is not None
    checkpoint = glob.glob(str(tmp_path / "out" / "checkpoint-*"))[0]
    resumed = GradInitCallback(quick())
    args = training_args(tmp_path, max_steps=3, save_strategy="no")
    trainer = Seq2SeqTrainer(
        model=tiny_marian(seed=3), args=args, train_dataset=reversal_dataset(), callbacks=[resumed]
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    assert resumed.result is None and trainer.state.global_step == 3


def test_callback_once_per_model_even_if_train_called_twice(tmp_path):
    callback = GradInitCallback(quick())
    trainer = Seq2SeqTrainer(
        model=tiny_marian(seed=4),
        args=training_args(tmp_path, max_steps=1),
        train_dataset=reversal_dataset(),
        callbacks=[callback],
    )
    trainer.train()
    first = callback.result
    trainer.train()
    assert callback.result is first


def test_plain_cnn_module_with_trainer(tmp_path):
    """The integration is not tied to transformer models."""
    torch.manual_seed(0)
    callback = GradInitCallback(quick(gamma=1e6))
    args = training_args(tmp_path, cls=TrainingArguments, optim="sgd", learning_rate=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(model=SmallCNN(), args=args, train_dataset=image_dataset(), callbacks=[callback])
        trainer.train()
    assert callback.result.config["target"] == "sgd" and callback.result.config["eta"] == 0.1
    assert callback.result.config["normalize_step"] is True  # the paper's CNN recipe
    assert trainer.state.global_step == 3


def test_callback_refuses_deepspeed_and_fsdp1_and_tells_a_fsdp2_fallback(tmp_path, monkeypatch, caplog):
    from types import SimpleNamespace

    from hf_gradinit import get_initializer
    from hf_gradinit.trainer.callback import _check_sharding

    gradinit_spec, lsuv_spec = get_initializer("gradinit"), get_initializer("lsuv")
    plain = torch.nn.Linear(2, 2)
    args = training_args(tmp_path)
    _check_sharding(args, plain, gradinit_spec, None)  # plain DDP / single process: fine
    args = training_args(tmp_path, fsdp=True, fsdp_config={"version": 1})
    with pytest.raises(GradInitError, match=r"FSDP1.*fsdp_version: 2.*model_init"):
        _check_sharding(args, plain, gradinit_spec, None)
    # FSDP2 asked for, but accelerate fell back to DDP (no GPU): the model is not sharded, so it
    # runs as under DDP and says so (LSUV too: nothing is sharded).
    args = training_args(tmp_path, fsdp=True, fsdp_config={"version": 2})
    with caplog.at_level("WARNING", logger="hf_gradinit.trainer.callback"):
        _check_sharding(args, plain, gradinit_spec, None)
        _check_sharding(args, plain, lsuv_spec, None)
    assert "not sharded" in caplog.text and "falls back to DDP" in caplog.text
    args = training_args(tmp_path)
    # chosen by `accelerate launch` (its config reaches the Trainer through these variables)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(GradInitError, match=r"DeepSpeed.*model_init"):
        _check_sharding(args, plain, gradinit_spec, None)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(GradInitError, match="FSDP1"):
        _check_sharding(args, plain, gradinit_spec, None)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.delenv("FSDP_VERSION")
    with pytest.raises(GradInitError, match=r"FSDP1.*model_builder"):
        _check_sharding(args, plain, gradinit_spec, SimpleNamespace(is_fsdp_enabled=True))


def test_trainer_init_kwargs_keeps_the_callback_route_under_fsdp2_for_gradinit_only(tmp_path):
    from hf_gradinit import InitArguments, trainer_init_kwargs

    args = training_args(tmp_path, fsdp=True, fsdp_config={"version": 2})
    kwargs = trainer_init_kwargs(InitArguments(model_init="gradinit"), args, model=tiny_marian())
    assert isinstance(kwargs["callbacks"][0], InitializerCallback)
    with pytest.raises(GradInitError, match=r"'lsuv' cannot run on an FSDP2.*model_builder"):
        trainer_init_kwargs(InitArguments(model_init="lsuv"), args, model=tiny_marian())
    args = training_args(tmp_path, fsdp=True, fsdp_config={"version": 1})
    with pytest.raises(GradInitError, match="FSDP1"):
        trainer_init_kwargs(InitArguments(model_init="gradinit"), args, model=tiny_marian())


@pytest.mark.parametrize(
    ("optim", "target"),
    [
        ("adamw_torch", "adamw"),
        ("adamw_torch_fused", "adamw"),
        ("sgd", "sgd"),
        ("lion_32bit", "adamw"),
        ("adagrad", "adam"),
        ("adafactor", None),
    ],
)
def test_target_for_optim(optim, target):
    assert target_for_optim(optim) == target


def test_unmodelled_optimizer_asks_for_a_target(tmp_path):
    from hf_gradinit.trainer import config_for_training

    with pytest.raises(GradInitError, match="adafactor"):
        config_for_training(GradInitConfig(), training_args(tmp_path, optim="adafactor"))
    assert (
        config_for_training(GradInitConfig(target="adam"), training_args(tmp_path, optim="adafactor")).target == "adam"
    )


# --- model_init ----------------------------------------------------------------------------
def test_model_init_computes_once_and_reapplies(tmp_path):
    args = training_args(tmp_path, max_steps=1)
    builds = []

    def build():
        builds.append(1)
        return tiny_marian(seed=5)  # the Trainer seeds before calling; this builder seeds itself

    model_init = make_model_init(build, reversal_batches(4, seed=5), quick(), training_args=args)
    probe = WeightsAtStart()
    trainer = Seq2SeqTrainer(model_init=model_init, args=args, train_dataset=reversal_dataset(), callbacks=[probe])
    after_init = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert len(builds) == 2 and model_init.computed == 1
    assert after_init.keys() == probe.weights.keys()
    assert all(torch.equal(after_init[n], probe.weights[n]) for n in after_init)
    assert any(not torch.equal(after_init[n], p.detach()) for n, p in tiny_marian(seed=5).named_parameters())

    # A hyperparameter trial that changes the learning rate gets its own GradInit; the same
    # trial again does not.
    trial_model = model_init({"learning_rate": 1e-2})
    assert model_init.computed == 2
    again = model_init({"learning_rate": 1e-2})
    assert model_init.computed == 2
    for (n, p), q in zip(trial_model.named_parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q), n
    model_init({"learning_rate": 5e-3})
    assert model_init.computed == 2  # the run's own settings, computed first


def test_model_init_skips_the_initialiser_when_resuming_from_a_checkpoint(tmp_path):
    first = training_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    model_init = make_model_init(lambda: tiny_marian(seed=5), reversal_batches(4, seed=5), quick(), training_args=first)
    Seq2SeqTrainer(model_init=model_init, args=first, train_dataset=reversal_dataset()).train()
    assert model_init.computed == 1
    checkpoint = str(tmp_path / "out" / "checkpoint-2")
    resumed = training_args(tmp_path, max_steps=3, resume_from_checkpoint=checkpoint)
    again = make_model_init(lambda: tiny_marian(seed=5), reversal_batches(4, seed=5), quick(), training_args=resumed)
    trainer = Seq2SeqTrainer(model_init=again, args=resumed, train_dataset=reversal_dataset())
    trainer.train(resume_from_checkpoint=resumed.resume_from_checkpoint)
    assert again.computed == 0 and trainer.state.global_step == 3  # not computed only to be overwritten


def test_model_init_needs_data_and_learning_rate():
    with pytest.raises(GradInitError, match="needs data"):
        make_model_init(lambda: tiny_marian(), None)
    with pytest.raises(GradInitError, match="learning rate"):
        make_model_init(lambda: tiny_marian(), reversal_batches(2), quick())()


# --- command-line arguments ----------------------------------------------------------------
def parse(tmp_path, *argv: str):
    parser = HfArgumentParser((Seq2SeqTrainingArguments, InitArguments))
    return parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--use_cpu", "true", *argv])


def test_parse_gradinit_arguments(tmp_path):
    args, init = parse(
        tmp_path,
        "--model_init", "gradinit", "--gradinit_iters", "5", "--gradinit_lr", "0.02", "--gradinit_gamma", "300",
        "--gradinit_hvp", "exact", "--gradinit_target", "sgd", "--gradinit_min_scale", "0.05",
        "--gradinit_batch_size", "9", "--save_init_scales", "true",
    )  # fmt: skip
    config = init.gradinit_config()
    assert (init.model_init, config.iters, config.lr, config.gamma, config.hvp) == ("gradinit", 5, 0.02, 300.0, "exact")
    assert (config.target, config.min_scale, config.eta) == ("sgd", 0.05, None)
    assert init.gradinit_batch_size == 9 and init.save_path(args).endswith("init_scales.json")
    assert config.betas is None and config.weight_decay == 0.0  # the target's reference values


def init_default_fd_scheme(tmp_path) -> str:
    return parse(tmp_path, "--model_init", "gradinit")[1].gradinit_config().fd_scheme


def test_parse_every_initialisers_own_options(tmp_path):
    from hf_gradinit import LSUVConfig, MetaInitConfig

    _, init = parse(
        tmp_path, "--model_init", "gradinit", "--gradinit_beta1", "0.8", "--gradinit_beta2", "0.95",
        "--gradinit_bias_min_scale", "0.1", "--gradinit_weight_decay", "1e-4", "--gradinit_fd_scheme", "central",
        "--gradinit_compile", "true", "--gradinit_norm_min_scale", "0.1", "--gradinit_max_tokens", "600",
        "--gradinit_exclude", "decoder.*v_proj", "out_proj", "--gradinit_tied_lookahead", "input_only",
        "--init_scales_partial", "true",
    )  # fmt: skip
    config = init.initializer_config()
    assert (config.betas, config.bias_min_scale, config.weight_decay) == ((0.8, 0.95), 0.1, 1e-4)
    assert config.norm_min_scale == 0.1 and config.exclude == ("decoder.*v_proj", "out_proj")
    assert init.gradinit_max_tokens == 600 and config.tied_lookahead == "input_only" and init.init_scales_partial
    assert config.fd_scheme == "central" and init_default_fd_scheme(tmp_path) == "forward" and config.compile
    _, init = parse(tmp_path, "--model_init", "lsuv", "--lsuv_tol", "0.05", "--lsuv_max_tries", "3")
    config = init.initializer_config()
    assert isinstance(config, LSUVConfig) and (config.tol, config.max_tries, config.orthonormal) == (0.05, 3, True)
    _, init = parse(
        tmp_path, "--model_init", "metainit", "--metainit_lr", "0.01", "--metainit_steps", "7",
        "--metainit_hvp", "finite_difference", "--metainit_random_inputs", "true",
    )  # fmt: skip
    config = init.initializer_config()
    assert isinstance(config, MetaInitConfig)
    assert (config.lr, config.steps, config.hvp, config.random_inputs) == (0.01, 7, "finite_difference", True)
    _, init = parse(tmp_path, "--model_init", "metainit", "--metainit_optimizer", "adam", "--metainit_clip", "0.5")
    config = init.initializer_config()
    assert (config.optimizer, config.lr, config.clip, config.momentum) == ("adam", 1e-3, 0.5, 0.9)
    with pytest.raises(ValueError, match="both --gradinit_beta1 and --gradinit_beta2"):
        parse(tmp_path, "--model_init", "gradinit", "--gradinit_beta2", "0.95")


def test_parse_rejects_unknown_initialiser_in_one_line(tmp_path, capsys):
    # One short line naming the registered initialisers and the nearest one, no usage dump.
    with pytest.raises(ValueError) as info:
        parse(tmp_path, "--model_init", "gradint")
    message = str(info.value)
    assert "\n" not in message and len(message) < 200, message
    assert "'gradint' is not a registered initialiser" in message and "default" in message
    assert "Did you mean 'gradinit'?" in message
    assert capsys.readouterr().err == ""


def test_trainer_init_kwargs_routes(tmp_path):
    args, init = parse(tmp_path, "--model_init", "gradinit", "--gradinit_iters", "2")
    model = tiny_marian(seed=6)
    kwargs = trainer_init_kwargs(init, args, model=model, callbacks=["mine"])
    assert kwargs["model"] is model and kwargs["callbacks"][0] == "mine"
    assert isinstance(kwargs["callbacks"][1], GradInitCallback.__mro__[1])
    kwargs = trainer_init_kwargs(
        init, args, model_builder=lambda: tiny_marian(seed=6), train_dataset=reversal_dataset()
    )
    assert set(kwargs) == {"model_init", "callbacks"}
    _, default = parse(tmp_path)
    assert trainer_init_kwargs(default, args, model=model)["callbacks"] == []


def test_script_lines_from_the_readme_end_to_end(tmp_path):
    """--model_init gradinit through parsed arguments, save and re-load of the scales."""
    args, init = parse(
        tmp_path, "--model_init", "gradinit", "--gradinit_iters", "3", "--save_init_scales", "true",
        "--max_steps", "1", "--per_device_train_batch_size", "6", "--report_to", "none", "--learning_rate", "1e-3",
    )  # fmt: skip
    trainer = Seq2SeqTrainer(
        args=args, train_dataset=reversal_dataset(), **trainer_init_kwargs(init, args, model=tiny_marian(seed=7))
    )
    trainer.train()
    saved = GradInitResult.load(tmp_path / "init_scales.json")
    assert saved.iterations == 3 and saved.config["eta"] == 1e-3
    _, reuse = parse(tmp_path, "--model_init", "gradinit", "--init_scales_file", str(tmp_path / "init_scales.json"))
    probe = WeightsAtStart()
    kwargs = trainer_init_kwargs(reuse, args, model=tiny_marian(seed=7), callbacks=[])
    kwargs["callbacks"].append(probe)
    Seq2SeqTrainer(args=args, train_dataset=reversal_dataset(), **kwargs).train()
    expected = apply_scales(tiny_marian(seed=7), saved)
    for n, p in expected.named_parameters():
        assert torch.equal(probe.weights[n], p.detach()), n


def test_tfixup_through_the_command_line_options_and_the_callback(tmp_path, capsys):
    # --model_init tfixup: T-Fixup's LayerNorm removal happens before the first step, training
    # runs on the changed model, and the one-line summary says what was removed.
    args, init = parse(tmp_path, "--model_init", "tfixup", "--max_steps", "2", "--report_to", "none",
                       "--per_device_train_batch_size", "6", "--disable_tqdm", "true")  # fmt: skip
    assert init.initializer_config().keep_layernorm is False
    model = tiny_marian(seed=4)
    trainer = Seq2SeqTrainer(args=args, train_dataset=reversal_dataset(),
                             **trainer_init_kwargs(init, args, model=model))  # fmt: skip
    trainer.train()
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert trainer.state.global_step == 2 and all(math.isfinite(h["loss"]) for h in trainer.state.log_history
                                                    if "loss" in h)  # fmt: skip
    out = capsys.readouterr().out
    assert "[hf_gradinit] tfixup:" in out and "normalisation layers removed" in out
    _, keep = parse(tmp_path, "--model_init", "tfixup", "--tfixup_keep_layernorm", "true")
    assert keep.initializer_config().keep_layernorm is True


def test_resuming_a_tfixup_run_removes_the_layernorms_the_checkpoint_was_trained_without(tmp_path):

    args = training_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    Seq2SeqTrainer(model=tiny_marian(seed=3), args=args, train_dataset=reversal_dataset(),
                   callbacks=[InitializerCallback("tfixup")]).train()  # fmt: skip
    checkpoint = glob.glob(str(tmp_path / "out" / "checkpoint-*"))[0]
    model = tiny_marian(seed=3)
    args = training_args(tmp_path, max_steps=3, save_strategy="no")
    resumed = InitializerCallback("tfixup")
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=reversal_dataset(), callbacks=[resumed])
    trainer.train(resume_from_checkpoint=checkpoint)
    assert resumed.result is None and trainer.state.global_step == 3
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
