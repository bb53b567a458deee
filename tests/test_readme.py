"""The README's code blocks run as written.

Every ```python block is run on its own in a fresh interpreter (in a temporary folder,
offline), except those marked just above with an HTML comment:
``<!-- readme-test: torchrun 2 -->`` runs the block under ``torchrun --nproc_per_node 2``;
``<!-- readme-test: lines of <file> -->`` checks that the block's lines are the added lines of
that diff. The ```diff block of the upstream recipe must be the shipped diff itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BLOCK = re.compile(r"(?:<!-- readme-test: (?P<mark>[^>]*?) -->\n)?```(?P<lang>\w+)\n(?P<code>.*?)^```", re.S | re.M)
BLOCKS = [(m["lang"], m["mark"], m["code"], README[: m.start()].count("\n") + 1) for m in BLOCK.finditer(README)]
PYTHON = [(mark, code, line) for lang, mark, code, line in BLOCKS if lang == "python"]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO)}  # fmt: skip


def test_the_readme_has_its_snippets():
    assert len(PYTHON) >= 6 and any(mark is None for mark, _, _ in PYTHON)


@pytest.mark.parametrize(("mark", "code", "line"), PYTHON, ids=[f"line{line}" for _, _, line in PYTHON])
def test_python_block_runs_as_written(mark, code, line, tmp_path):
    if mark is not None and mark.startswith("lines of "):
        added = (REPO / mark.removeprefix("lines of ")).read_text().splitlines()
        added = {a[1:].strip() for a in added if a.startswith("+") and not a.startswith("+++")}
        for row in code.strip().splitlines():
            assert row.split("  #")[0].strip() in {a.split("  #")[0].strip() for a in added}, row
        return
    script = tmp_path / "snippet.py"
    script.write_text(code)
    if mark == "torchrun 2":
        pytest.importorskip("torch.distributed.fsdp")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    else:
        assert mark is None, f"unknown readme-test mark {mark!r} (README line {line})"
        cmd = [sys.executable, str(script)]
    done = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"README line {line}:\n{done.stderr[-3000:]}"
    # whatever a snippet writes, it writes for real
    for png in tmp_path.glob("*.png"):
        assert png.stat().st_size > 10_000, png


def test_the_recipe_diff_in_the_readme_is_the_shipped_one():
    diffs = [code for lang, _, code, _ in BLOCKS if lang == "diff"]
    shipped = (REPO / "examples" / "upstream" / "run_translation.diff").read_text()
    assert diffs and diffs[0] == shipped[shipped.index("--- a/") :]


def test_the_registry_table_and_which_initialiser_when_name_every_initialiser():
    from hf_gradinit import available_initializers

    registry = README[README.index("| name | what it does |") :].split("\n\n")[0]
    when = README[README.index("### Which initialiser when") :].split("\n\n")[1]
    for name in available_initializers():
        assert f"| `{name}` |" in registry, name
        assert f"`{name}`" in when, name
