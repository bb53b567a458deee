"""The sweep helpers the example scripts share: resuming, killed runs, newest record per key."""

from __future__ import annotations

import doctest
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "common"))

import reporting
from reporting import append_jsonl, read_jsonl, run_sweep


def test_the_docstring_examples_hold():
    assert doctest.testmod(reporting).failed == 0


@dataclass(frozen=True)
class Item:
    key: str


def test_a_run_killed_by_a_signal_runs_again_and_its_new_record_wins(tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    append_jsonl(results, {"key": "a", "returncode": 0, "bleu": 1.0})
    append_jsonl(results, {"key": "b", "returncode": -15, "bleu": None})  # the session ended under it
    append_jsonl(results, {"key": "c", "returncode": 1, "bleu": None})  # a real failure: not retried
    ran = []

    def execute(item):
        ran.append(item.key)
        return {"key": item.key, "returncode": 0, "bleu": 2.0, "wall_time_s": 0.0}

    records = run_sweep([Item("a"), Item("b"), Item("c"), Item("d")], execute, str, results, jobs=1,
                        report_only=False)  # fmt: skip
    assert ran == ["b", "d"] and "2 runs already done, 2 to go" in capsys.readouterr().out
    newest = {r["key"]: r for r in records}
    assert len(records) == 4 and newest["b"]["returncode"] == 0 and newest["b"]["bleu"] == 2.0
    assert len(read_jsonl(results)) == 5  # the killed record stays in the file, superseded


def test_records_of_another_sweep_are_shown_first_and_never_run(tmp_path, capsys):
    other, results = tmp_path / "other.jsonl", tmp_path / "results.jsonl"
    append_jsonl(other, {"key": "old", "returncode": 0, "bleu": 1.0})
    append_jsonl(other, {"key": "shared", "returncode": 0, "bleu": 1.0})
    append_jsonl(results, {"key": "shared", "returncode": 0, "bleu": 3.0})

    def execute(item):
        raise AssertionError(f"{item.key} should not run")

    records = run_sweep([Item("shared")], execute, str, results, jobs=1, report_only=False, with_records=[other])
    assert [(r["key"], r["bleu"]) for r in records] == [("old", 1.0), ("shared", 3.0)]
    assert "1 runs already done, 0 to go" in capsys.readouterr().out
    assert len(read_jsonl(results)) == 1  # the other sweep's records are not copied in


def test_read_jsonl_leaves_out_a_last_line_still_being_written(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"key": "a"}\n{"key": "b", "ret')
    assert read_jsonl(path) == [{"key": "a"}]
    path.write_text('{"key": "a", "ret\n{"key": "b"}\n')  # damage anywhere else is an error
    with pytest.raises(json.JSONDecodeError):
        read_jsonl(path)
