"""The README's recipe for transformers' own example scripts, applied as the diff a user applies.

``examples/upstream/*.diff`` are applied with ``git apply`` to excerpts of upstream's
``run_translation.py`` and ``run_clm.py`` (``tests/upstream/*.py.txt``: the touched lines and
their context verbatim, the hub parts replaced by an offline stand-in), and the patched scripts
are run as a user runs them: from the command line, and from a JSON file of arguments (the
branch where upstream's ``parse_json_file`` returns one dataclass per parser type).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("datasets")
pytest.importorskip("tokenizers")

REPO = Path(__file__).resolve().parents[1]
DIFFS = REPO / "examples" / "upstream"
TRANSLATION = "examples/pytorch/translation/run_translation.py"
CLM = "examples/pytorch/language-modeling/run_clm.py"

COMMON = ["--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0", "--max_steps", "2",
          "--per_device_train_batch_size", "16", "--learning_rate", "1e-3", "--logging_steps", "1",
          "--model_init", "gradinit", "--gradinit_iters", "2"]  # fmt: skip


def checkout(tmp_path: Path, excerpt: str, target: str, *diffs: str) -> Path:
    """A folder laid out as a transformers checkout with the excerpt at ``target``, patched."""
    root = tmp_path / "transformers"
    (root / target).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "tests" / "upstream" / excerpt, root / target)
    for diff in diffs:
        done = subprocess.run(["git", "apply", "-v", str(DIFFS / diff)], cwd=root, capture_output=True, text=True)
        assert done.returncode == 0, f"{diff} does not apply:\n{done.stderr}"
    return root / target


def run_script(script: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "examples" / "translation")])}  # fmt: skip
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=600)


def gradinit_logged(output_dir: Path) -> dict:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return next(h for h in history if "gradinit/iterations" in h)


def test_diffs_change_five_lines_and_say_how_to_apply():
    recipe = (DIFFS / "run_translation.diff").read_text()
    added = [line for line in recipe.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert len(added) == 5  # the import, the parser, both parse branches, the Trainer
    assert "git apply" in recipe
    bleu = (DIFFS / "offline_sacrebleu.diff").read_text()
    assert sum(line.startswith("+") and not line.startswith("+++") for line in bleu.splitlines()) == 2


def test_unpatched_excerpt_needs_the_hub_and_has_no_model_init(tmp_path):
    # The excerpt is what the diff is for: without it there is no --model_init.
    script = checkout(tmp_path, "run_clm.py.txt", CLM)
    done = run_script(script, "--output_dir", str(tmp_path / "out"), *COMMON)
    assert done.returncode != 0 and "--model_init" in done.stderr


def test_patched_run_translation_trains_with_gradinit_from_flags_and_from_json(tmp_path):
    script = checkout(tmp_path, "run_translation.py.txt", TRANSLATION, "run_translation.diff", "offline_sacrebleu.diff")
    out = tmp_path / "flags"
    done = run_script(script, "--output_dir", str(out), "--do_train", "--do_eval", "--predict_with_generate", *COMMON)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[hf_gradinit] GradInit: 2 iterations" in done.stdout  # reaches the console at upstream's log level
    assert gradinit_logged(out)["gradinit/iterations"] == 2
    assert "eval_bleu" in json.loads((out / "eval_results.json").read_text())  # BLEU without the hub

    # The JSON branch: one file of arguments, parse_json_file returns four dataclasses.
    config = {
        "output_dir": str(tmp_path / "json"), "do_train": True, "use_cpu": True, "report_to": "none", "seed": 0,
        "max_steps": 2, "per_device_train_batch_size": 16, "learning_rate": 1e-3, "disable_tqdm": True,
        "model_init": "gradinit", "gradinit_iters": 3,
    }  # fmt: skip
    (tmp_path / "args.json").write_text(json.dumps(config))
    done = run_script(script, str(tmp_path / "args.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert gradinit_logged(tmp_path / "json")["gradinit/iterations"] == 3


def test_patched_run_clm_trains_with_gradinit(tmp_path):
    script = checkout(tmp_path, "run_clm.py.txt", CLM, "run_clm.diff")
    done = run_script(script, "--output_dir", str(tmp_path / "out"), "--do_train", *COMMON)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[hf_gradinit] GradInit: 2 iterations" in done.stdout
    logged = gradinit_logged(tmp_path / "out")
    assert logged["gradinit/iterations"] == 2 and logged["gradinit/scale_weight_min"] > 0
    # A typo in --model_init: one short line at the end, not argparse's usage of every flag.
    done = run_script(script, "--output_dir", str(tmp_path / "typo"), "--model_init", "gradint")
    assert done.returncode != 0
    assert "'gradint' is not a registered initialiser" in done.stderr.strip().splitlines()[-1]
    assert "usage:" not in done.stderr
