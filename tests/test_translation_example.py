"""examples/translation/run_translation.py end to end, on tiny settings (CPU, seconds each)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import transformers
from conftest import run_script_main

import hf_gradinit

pytest.importorskip("datasets")
pytest.importorskip("sacrebleu")
pytest.importorskip("tokenizers")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples" / "translation"))
DATA = Path(os.environ.get("HF_GRADINIT_DATA", REPO.parent / "shared" / "data"))

import run_translation  # noqa: E402

TINY = [
    "--config_overrides", "d_model=32,encoder_layers=1,decoder_layers=1,encoder_ffn_dim=64,decoder_ffn_dim=64",
    "--vocab_size", "300", "--max_steps", "4", "--per_device_train_batch_size", "16", "--generation_num_beams", "2",
    "--generation_max_length", "24", "--max_eval_samples", "12", "--max_predict_samples", "12",
    "--disable_tqdm", "true", "--logging_steps", "1", "--gradinit_iters", "3",
]  # fmt: skip


def run(tmp_path, *argv: str) -> dict:
    return run_translation.main(["--output_dir", str(tmp_path / "out"), *TINY, *argv])


@pytest.mark.parametrize("init", ["default", "gradinit"])
def test_builtin_data_end_to_end(init, tmp_path, capsys, recwarn):
    results = run(tmp_path, "--model_init", init, "--builtin_train_size", "200")
    out = capsys.readouterr().out
    assert not [w for w in recwarn if "pin_memory" in str(w.message)]  # pinning follows the device
    # upstream's metrics blocks, then where the results went, last
    for block in ("train", "eval", "predict"):
        assert f"***** {block} metrics *****" in out
    assert out.strip().splitlines()[-1].startswith("***** run_translation.py: results in ")
    assert "predict_bleu" in out
    for name in ("train_results.json", "eval_results.json", "predict_results.json"):
        assert (tmp_path / "out" / name).is_file()
    picture = tmp_path / "out" / "init_scales.png"
    assert picture.is_file() == (init == "gradinit")
    if init == "gradinit":
        assert picture.stat().st_size > 10_000
        assert out.count("[hf_gradinit] GradInit: 3 iterations") == 1  # once, whatever the log level
        # all_results.json holds GradInit's summary figures, as the README says
        assert results["gradinit/iterations"] == 3 and "gradinit/scale_weight_min" in results
    assert results["model_init"] == init
    assert 0.0 <= results["eval_bleu"] <= 100.0 and 0.0 <= results["predict_bleu"] <= 100.0
    saved = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert saved["predict_bleu"] == results["predict_bleu"] and saved["machine"]
    if init == "gradinit":
        assert 0 < results["init_fraction_of_train_runtime"]
        assert any(
            "gradinit/iterations" in h
            for h in json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
        )
    else:
        assert "init_seconds" not in results
    # The saved model and tokenizer reload with from_pretrained and translate.
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out")
    inputs = tokenizer(["Ich habe drei Äpfel."], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, num_beams=1)
    assert isinstance(tokenizer.batch_decode(out, skip_special_tokens=True)[0], str)
    assert tokenizer.decode(tokenizer("Am dritten Mai").input_ids, skip_special_tokens=True) == "Am dritten Mai"


def test_json_lines_and_xavier_base(tmp_path):
    sys.path.insert(0, str(REPO / "examples" / "translation"))
    from builtin_data import builtin_pairs

    for name, seed in (("train", 0), ("dev", 1)):
        with open(tmp_path / f"{name}.json", "w") as f:
            for row in builtin_pairs(120, seed):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    results = run(
        tmp_path, "--train_file", str(tmp_path / "train.json"), "--validation_file", str(tmp_path / "dev.json"),
        "--do_predict", "false", "--base_init", "xavier",
    )  # fmt: skip
    assert results["base_init"] == "xavier" and "eval_bleu" in results and "predict_bleu" not in results


@pytest.mark.skipif(not (DATA / "multi30k" / "raw" / "train.de").exists(), reason=f"Multi30k not found under {DATA}")
@pytest.mark.parametrize("init", ["default", "gradinit"])
def test_multi30k_slice(tmp_path, init):
    results = run(
        tmp_path, "--data_dir", str(DATA / "multi30k" / "raw"), "--validation_split", "val",
        "--test_split", "test_2016_flickr", "--max_train_samples", "300", "--model_init", init,
    )  # fmt: skip
    assert "predict_bleu" in results and results["train_loss"] > 0 and results["model_init"] == init
    assert ("init_seconds" in results) == (init == "gradinit")


@pytest.mark.skipif(
    not (DATA / "iwslt14_valid_test" / "tok" / "valid.de").exists(), reason=f"IWSLT'14 not found under {DATA}"
)
def test_iwslt_tokenised_bleu(tmp_path):
    """The IWSLT'14 valid/test files work through --data_dir (here valid doubles as training text)."""
    results = run(
        tmp_path, "--data_dir", str(DATA / "iwslt14_valid_test" / "tok"), "--train_split", "valid",
        "--validation_split", "test", "--do_predict", "false", "--max_train_samples", "300", "--bleu_tokenize", "none",
    )  # fmt: skip
    assert "eval_bleu" in results


def test_missing_splits_and_a_used_output_dir_are_said(tmp_path, capsys):
    # A Multi30k-style folder whose validation/test files have other names than the defaults:
    # --do_eval (on by default) stops, naming the flag and what was found.
    folder = tmp_path / "m30k"
    folder.mkdir()
    from builtin_data import builtin_pairs

    for split in ("train", "val", "test_2016_flickr"):
        rows = builtin_pairs(60, seed=len(split))
        for lang in ("de", "en"):
            (folder / f"{split}.{lang}").write_text("\n".join(r["translation"][lang] for r in rows) + "\n")
    err = _fails(tmp_path, capsys, "--data_dir", str(folder))
    assert "--do_eval needs a validation split" in err and "--validation_split" in err and "train (60)" in err
    err = _fails(tmp_path, capsys, "--data_dir", str(folder), "--validation_split", "val")
    assert "--do_predict needs a test split" in err and "--test_split" in err
    # Evaluation off: no error, and the found splits are logged.
    run(tmp_path, "--data_dir", str(folder), "--do_eval", "false", "--do_predict", "false")
    # The folder now holds that finished run and no checkpoint: refuse, do not overwrite.
    err = _fails(tmp_path, capsys, "--data_dir", str(folder), "--do_eval", "false", "--do_predict", "false")
    assert "already exists and is not empty" in err and "--overwrite_output_dir true" in err


def _fails(tmp_path, capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        run(tmp_path, *argv)
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--model_init", "gradinit", "--gradinit_iters", "0"], "--gradinit_iters must be an integer >= 1"),
        (["--model_init", "gradinit", "--gradinit_eta", "-1"], "--gradinit_eta must be a finite number > 0"),
        (["--model_init", "gradinit", "--gradinit_overlap", "2"], "--gradinit_overlap must lie in [0, 1]"),
        (["--model_init", "gradinit", "--optim", "adafactor"], "--optim adafactor takes"),
        (["--config_name", "nope"], "--config_name nope: not a shipped config"),
        (["--max_tokens", "0"], "--max_tokens must be a positive number"),
        (["--train_time_limit_s", "-5"], "--train_time_limit_s must be >= 0"),
        (["--model_init", "gradinit", "--gradinit_beta1", "0.9"], "Give both --gradinit_beta1 and --gradinit_beta2"),
    ],
)
def test_bad_options_fail_before_any_data_or_model_work(tmp_path, capsys, monkeypatch, argv, match):
    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded before the options were checked")

    def not_yet(self):  # its __post_init__ imports most of transformers: seconds before the error
        raise AssertionError("TrainingArguments was built before the options were checked")

    monkeypatch.setattr(run_translation, "load_raw_datasets", no_data)
    monkeypatch.setattr(transformers.TrainingArguments, "__post_init__", not_yet)
    with pytest.raises(SystemExit) as info:
        run_translation.main(["--output_dir", str(tmp_path / "out"), *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("run_translation.py: error: ") and match in err


def test_a_damaged_scales_file_fails_before_any_data_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run_translation, "load_raw_datasets", lambda *a, **k: pytest.fail("data loaded"))
    (tmp_path / "s.json").write_text('{"format_version": 1, "scales": {"w": -1}}')
    with pytest.raises(SystemExit):
        run_translation.main(["--output_dir", str(tmp_path / "o"), "--model_init", "gradinit",
                              "--init_scales_file", str(tmp_path / "s.json")])  # fmt: skip
    assert "--init_scales_file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["--help"], "--model_init"), (["--model_init", "gradinit", "--gradinit_iters", "0"], "--gradinit_iters")],
)
def test_help_and_argument_errors_answer_without_the_slow_imports(argv, expected):
    """--help and a bad option must not wait for the Trainer, datasets and the model code to import."""
    output, loaded = run_script_main(
        REPO / "examples" / "translation" / "run_translation.py",
        argv,
        (
            "datasets",
            "tokenizers",
            "transformers.trainer",
            "hf_gradinit.trainer.callback",
            "transformers.modeling_utils",
            "transformers.models.marian.modeling_marian",
        ),
    )
    assert expected in output and loaded == [], (loaded, output[-800:])


def test_bad_arguments_exit_with_clear_messages(tmp_path, capsys):
    with open(tmp_path / "fr.json", "w") as f:
        f.write(json.dumps({"translation": {"fr": "bonjour", "en": "hello"}}) + "\n")
    err = _fails(tmp_path, capsys, "--train_file", str(tmp_path / "fr.json"))
    assert "not the pair --source_lang de --target_lang en" in err and "['en', 'fr']" in err

    err = _fails(tmp_path, capsys, "--config_name", str(tmp_path / "nope.json"))
    assert "not a shipped config" in err and "transformer_iwslt_de_en" in err

    err = _fails(tmp_path, capsys, "--train_file", str(tmp_path / "missing.json"))
    assert "no such file" in err

    (tmp_path / "bad.json").write_bytes(b"\xff\xfe not json\n")
    err = _fails(tmp_path, capsys, "--train_file", str(tmp_path / "bad.json"))
    assert "Cannot read" in err

    (tmp_path / "pair").mkdir()
    (tmp_path / "pair" / "train.de").write_text("eins\nzwei\n")
    err = _fails(tmp_path, capsys, "--data_dir", str(tmp_path / "pair"))
    assert "train.en is missing" in err

    err = _fails(tmp_path, capsys, "--model_init", "nope")
    # one short line, last, not buried under the usage of every TrainingArguments flag
    assert "'nope' is not a registered initialiser" in err.strip().splitlines()[-1]
    assert len(err.strip().splitlines()) == 1, err


def test_no_warmup_sweep_runs_resumes_and_reports(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import no_warmup

    argv = [
        "--out", str(tmp_path / "sweep"), "--variants", "default+warmup", "xavier/gradinit@floor0.1",
        "--adam_lrs", "1e-3", "--sgd_lrs", "0.1", "--momenta", "0.9", "--seeds", "0", "--warmup", "2",
        "--logging_steps", "1", "--jobs", "2", "--threads_per_run", "1",
        "--", *TINY, "--builtin_train_size", "120", "--do_predict", "false",
    ]  # fmt: skip
    records = no_warmup.main(argv)  # two runs at a time: results.jsonl must still hold whole records
    assert len(records) == 4 and all(r["returncode"] == 0 for r in records), [r.get("returncode") for r in records]
    by_key = {r["key"]: r for r in records}
    warm = by_key["default+warmup_adam_lr0.001_s0"]
    assert warm["warmup"] == 2 and warm["model_init"] == "default" and "--warmup_steps 2" in warm["command"]
    sgd = by_key["xavier-gradinit@floor0.1_sgd_lr0.1_m0.9_s0"]
    assert sgd["base_init"] == "xavier" and "momentum=0.9" in sgd["command"] and sgd["init_seconds"] > 0
    assert sgd["ablation"] == "floor0.1" and "--gradinit_min_scale 0.1" in sgd["command"]
    assert warm["ablation"] is None and "--gradinit_min_scale" not in warm["command"]
    assert all(r["loss_curve"] and "eval_bleu" in r and 0 < r["eval_distinct"] <= 1 for r in records)
    table = (tmp_path / "sweep" / "results.md").read_text()
    assert "sgd (momentum 0.9)" in table and "xavier/gradinit@floor0.1" in table
    assert (tmp_path / "sweep" / "bleu_vs_lr.png").stat().st_size > 0
    assert (tmp_path / "sweep" / "loss_curves.png").stat().st_size > 0
    capsys.readouterr()
    again = no_warmup.main(argv)  # resumes: nothing left to run
    assert len(again) == 4 and "4 runs already done, 0 to go" in capsys.readouterr().out


def test_no_warmup_table_says_diverged_where_the_trainer_logged_filtered_nan_losses(tmp_path):
    import no_warmup

    def record(seed, curve):
        return {"optim": "sgd", "momentum": 0.9, "lr": 0.3, "variant": "default", "seed": seed,
                "returncode": 0, "loss_curve": curve}  # fmt: skip

    no_warmup.write_table([record(0, [[10, 6.5], [20, 0.0]]), record(1, [[10, 6.5], [20, 6.1]])], tmp_path / "t.md")
    assert "[diverged in 1 of 2] (n=2)" in (tmp_path / "t.md").read_text()
    no_warmup.write_table([record(1, [[10, 6.5], [20, 6.1]])], tmp_path / "t.md")
    assert "[6.10] (n=1)" in (tmp_path / "t.md").read_text()


def test_no_warmup_rejects_unknown_variant(tmp_path, capsys):
    import no_warmup

    with pytest.raises(SystemExit):
        no_warmup.main(["--out", str(tmp_path), "--variants", "magic"])
    assert "INIT must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        no_warmup.main(["--out", str(tmp_path), "--variants", "fairseq/gradinit@magic"])
    assert "ABLATION must be one of" in capsys.readouterr().err


def test_paper_recipe_sets_the_papers_values_and_flags_still_win():
    model_args, _, training_args, init_args, recipe_args = run_translation.parse_args(
        ["--output_dir", "unused", "--recipe", "paper", "--learning_rate", "1e-3"]
    )
    assert model_args.config_name == "paper_iwslt_de_en" and model_args.base_init == "fairseq"
    assert training_args.learning_rate == 1e-3  # the flag, not the recipe's 5e-4
    assert training_args.max_grad_norm == 0.0 and training_args.warmup_steps == 0
    assert (training_args.adam_beta1, training_args.adam_beta2) == (0.9, 0.98)
    assert recipe_args.max_tokens == 4096 and init_args.gradinit_max_tokens == 6000
    assert recipe_args.schedule_steps == 100000 and recipe_args.gradinit_eta_scale == 2.0
    assert (init_args.gradinit_iters, init_args.gradinit_lr, init_args.gradinit_gamma) == (780, 2.5e-3, 1000.0)
    config = json.loads((REPO / "examples/translation/configs/paper_iwslt_de_en.json").read_text())
    assert not config["share_encoder_decoder_embeddings"] and config["tie_word_embeddings"]
    assert (config["attention_dropout"], config["activation_dropout"], config["dropout"]) == (0.1, 0.1, 0.3)
    # Without a recipe the script's own defaults hold, clipping off as in the paper.
    _, _, plain, _, plain_recipe = run_translation.parse_args(["--output_dir", "unused"])
    assert plain.max_grad_norm == 0.0 and plain_recipe.max_tokens is None and plain.learning_rate == 5e-4


def test_paper_recipe_bounds_an_sgd_targets_l2_norm_by_the_authors_sgd_gamma():
    def gamma(*argv):
        return run_translation.parse_args(["--output_dir", "unused", *argv])[3].gradinit_gamma

    sgd = ("--optim", "sgd", "--optim_args", "momentum=0.9")
    assert gamma("--recipe", "paper_small", *sgd) == run_translation.RECIPE_SGD_GAMMA == 1.0
    assert gamma("--recipe", "paper_small", "--optim", "adamw_torch", "--gradinit_target", "sgd") == 1.0
    assert gamma("--recipe", "paper_small") == 1000.0  # Adam: the paper's value
    assert gamma("--recipe", "paper_small", *sgd, "--gradinit_gamma", "1000") == 1000.0  # a flag wins
    assert gamma("--recipe", "paper_small", *sgd, "--gradinit_gamma=5") == 5.0
    assert gamma(*sgd) == hf_gradinit.InitArguments().gradinit_gamma  # no recipe: the library's default


def test_paper_small_recipe_end_to_end_with_token_batches_schedule_report_and_resume(tmp_path):
    argv = [
        "--recipe", "paper_small", "--builtin_train_size", "200", "--model_init", "gradinit",
        "--max_tokens", "200", "--gradinit_max_tokens", "300", "--first_step_report", "true",
        "--save_init_scales", "true", "--learning_rate", "1e-3", "--do_eval", "false", "--do_predict", "false",
        "--save_strategy", "steps", "--save_steps", "2",
    ]  # fmt: skip
    results = run(tmp_path, *argv)
    out = tmp_path / "out"
    assert results["recipe"] == "paper_small" and results["base_init"] == "fairseq"
    saved = json.loads((out / "init_scales.json").read_text())
    assert saved["config"]["eta"] == pytest.approx(2e-3)  # eta = 2 x lr, the paper's ratio
    state = json.loads((out / "trainer_state.json").read_text())
    lrs = [h["learning_rate"] for h in state["log_history"] if "learning_rate" in h]
    # Linear decay over 100k updates: after 4 steps the lr is still 1e-3 * (1 - 4/1e5), not 0.
    assert lrs and all(lr == pytest.approx(1e-3, rel=1e-4) for lr in lrs)
    for stem in ("first_step_report", "first_step_report_init"):
        report = json.loads((out / f"{stem}.json").read_text())
        assert report["target"] == "adamw" and report["lr"] == 1e-3 and report["rows"]
        assert (out / f"{stem}.md").read_text().startswith("First adamw step at lr 0.001")
    assert (out / "first_step_report.png").stat().st_size > 10_000
    # Resuming: a second call with more steps goes on from the last checkpoint, GradInit not rerun.
    results = run(tmp_path, *argv, "--max_steps", "6")
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert sum("gradinit/iterations" in h for h in state["log_history"]) == 1


def test_time_limit_ends_training_then_evaluates_and_records_the_step(tmp_path):
    # A limit already passed by the first step: one step is trained, then eval and predict run.
    results = run(tmp_path, "--builtin_train_size", "200", "--train_time_limit_s", "1e-6")
    assert results["global_step"] == 1 and results["time_limited"] is True
    assert 0.0 <= results["predict_bleu"] <= 100.0
    saved = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert saved["global_step"] == 1 and saved["time_limited"] is True
    # A limit never reached changes nothing: all 4 steps, not time-limited.
    again = ["--train_time_limit_s", "1e6", "--overwrite_output_dir", "true"]
    results = run(tmp_path, "--builtin_train_size", "200", *again)
    assert results["global_step"] == 4 and results["time_limited"] is False


def test_time_limit_callback_stops_at_the_first_step_past_the_deadline():
    from transformers import TrainerControl, TrainerState
    from translation_trainer import TimeLimit

    now = [0.0]
    limit = TimeLimit(deadline=10.0, clock=lambda: now[0])
    state, control = TrainerState(max_steps=100), TrainerControl()
    for step, t in enumerate([3.0, 9.9, 10.0, 12.0], start=1):
        now[0], state.global_step = t, step
        limit.on_step_end(None, state, control)
        assert control.should_training_stop == (step >= 3)
    assert limit.stopped_at == 3 and not control.should_save  # no checkpoints asked for (args None)
    # With checkpoints, the step it stops at is saved, so a later run with more time goes on.
    from types import SimpleNamespace

    control = TrainerControl()
    TimeLimit(deadline=0.0, clock=lambda: 1.0).on_step_end(SimpleNamespace(save_strategy="steps"), state, control)
    assert control.should_training_stop and control.should_save
    # The last step of a run is not a stop by the limit.
    done = TimeLimit(deadline=0.0, clock=lambda: 1.0)
    state, control = TrainerState(max_steps=5, global_step=5), TrainerControl()
    done.on_step_end(None, state, control)
    assert done.stopped_at is None and not control.should_training_stop


def test_token_bounded_training_batches_respect_the_bound(tmp_path):
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainingArguments

    tokenizer = run_translation.train_bpe_tokenizer(["eins zwei drei vier", "one two three four five"] * 50, 60, 64)
    rows = [{"input_ids": [5] * n, "attention_mask": [1] * n, "labels": [6] * (n // 2 + 1)} for n in range(1, 41)]
    from datasets import Dataset

    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", seed=0)
    from translation_trainer import TranslationTrainer

    trainer = TranslationTrainer(
        max_tokens=64, args=args, train_dataset=Dataset.from_list(rows),
        data_collator=DataCollatorForSeq2Seq(tokenizer), model=torch_model(),
    )  # fmt: skip
    batches = list(trainer.get_train_dataloader())
    assert sum(b["input_ids"].shape[0] for b in batches) == len(rows)
    assert all(b["input_ids"].numel() <= 64 for b in batches)


def torch_model():
    from conftest import tiny_marian

    return tiny_marian(vocab=64)


def test_compare_first_steps_table(tmp_path):
    import compare_first_steps
    import torch
    from conftest import reversal_batches, tiny_marian

    from hf_gradinit.diagnostics import first_step_report

    model, batch = tiny_marian(seed=0), reversal_batches(1)[0]
    first_step_report(model, batch, lr=1e-3).save(tmp_path / "a.json")
    with torch.no_grad():
        model.model.encoder.layers[0].fc2.weight.mul_(0.5)
    first_step_report(model, batch, lr=2e-3).save(tmp_path / "b.json")
    out = compare_first_steps.main([str(tmp_path / "a.json"), "base", str(tmp_path / "b.json"), "halved"])
    fc2 = next(line for line in out.splitlines() if "| encoder | fc2.weight |" in line)
    fc1 = next(line for line in out.splitlines() if "| encoder | fc1.weight |" in line)
    # lr x2 doubles every relative step; halving fc2 in one of the two layers (of about equal
    # norms) gives about (2*2 + 2) / 2 = 3.
    assert fc1.endswith("| 2.00 |") and float(fc2.split("|")[-2]) == pytest.approx(3.0, abs=0.1)
    # The outlier table: a weight shrunk to 1e-3 of its norm is moved by far more than its norm.
    with torch.no_grad():
        model.model.decoder.layers[0].fc1.weight.mul_(1e-3)
    first_step_report(model, batch, lr=1e-3).save(tmp_path / "c.json")
    out = compare_first_steps.main([str(tmp_path / "a.json"), "base", str(tmp_path / "c.json"), "shrunk"])
    base, shrunk = (line.split(" | ") for line in out.splitlines()[-2:])
    assert base[1].startswith("0 of") and shrunk[1].startswith("1 of")
    assert shrunk[2].endswith("(model.decoder.layers.0.fc1.weight) |") and float(shrunk[2].split()[0]) > 1


def test_loss_curves_stop_where_a_run_diverged():
    import no_warmup

    curve = [[10, 8.1], [20, 5.2e12], [30, 0.0], [40, 0.0]]  # the Trainer logs NaN losses as 0.0
    assert no_warmup.finite_part(curve) == ([[10, 8.1], [20, 5.2e12]], True)
    assert no_warmup.finite_part([[10, 8.1], [20, 6.0]]) == ([[10, 8.1], [20, 6.0]], False)
    assert no_warmup.finite_part([[10, float("nan")]]) == ([], True)
