"""examples/gpu_session.py: what it plans for a lent GPU, and how it runs jobs inside a budget."""

from __future__ import annotations

import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))

import gpu_session  # noqa: E402
from gpu_session import Job, run_jobs, sweep_cifar  # noqa: E402

from hf_gradinit import available_initializers  # noqa: E402


def test_the_cifar_plan_is_the_papers_table_seed_0_first():
    plan = gpu_session.cifar_plan(smoke=False)
    assert len(plan) == len(set(plan))
    columns = {m for m, _, _ in plan}
    assert columns == set(gpu_session.CIFAR_COLUMNS) | {"resnet110_nobn"}  # Fixup's own network
    for model in gpu_session.CIFAR_COLUMNS:  # every column, every row of the paper, two seeds
        for variant in gpu_session.PAPER_INITS:
            assert {(model, variant, 0), (model, variant, 1)} <= set(plan)
    first_seed_1 = next(i for i, (_, _, s) in enumerate(plan) if s == 1)
    main = set(gpu_session.CIFAR_COLUMNS[:4])
    assert all(s == 0 for m, _, s in plan[:first_seed_1]) and len(plan[:first_seed_1]) == 4 * 5
    assert all(m in main for m, _, _ in plan[:first_seed_1])
    assert {m for m, v, _ in plan if v == "fixup"} == {"resnet110_nobn"}  # Fixup needs its multipliers
    assert "resnet110_nobn_paper" in gpu_session.CIFAR_COLUMNS  # the paper's column: the authors' network
    for _, variant, _ in plan:
        assert sweep_cifar.base_init(variant) in available_initializers()
    # the paper's MetaInit rows are the authors' variant; the MetaInit paper's runs after the table
    assert gpu_session.PAPER_METAINIT in gpu_session.PAPER_INITS and "metainit" not in gpu_session.PAPER_INITS
    assert ("vgg19_bn", "metainit", 1) in plan
    # its estimate: 391 steps at batch 128 cost about 2.6 times the sign-SGD's 100 at 192
    vgg = gpu_session.EPOCH_S["vgg19"]
    assert gpu_session.cifar_est("vgg19_bn", "metainit") == pytest.approx(15 + vgg * 5.0)
    paper_metainit = gpu_session.cifar_est("vgg19_bn", gpu_session.PAPER_METAINIT)
    assert paper_metainit == pytest.approx(15 + vgg * (1 + 0.04 * 391 * 2 / 3))


def test_the_translation_plan_is_the_papers_regime(tmp_path):
    jobs = gpu_session.translation_jobs(tmp_path, tmp_path / "data", smoke=False)
    first = [" ".join(j.argv) for j in jobs[:4]]
    wanted = ["fairseq/gradinit", "fairseq/default", "fairseq/default+warmup", "fairseq/tfixup"]
    for text, variant in zip(first, wanted, strict=True):
        assert f"--variants {variant} --adam_lrs 5e-4" in text and "--recipe paper " in text
        assert str(tmp_path / "data" / "multi30k" / "raw") in text
    assert "--warmup 4000 --warmup_scheduler inverse_sqrt" in first[2]
    assert all(j.reserve_s for j in jobs)  # every run trains to the deadline, then decodes
    # With the default budget GradInit's run (780 iterations first) still starts.
    assert jobs[0].est_s + gpu_session.FINAL_RESERVE_S <= gpu_session.DEFAULT_BUDGET_S


def _job(name: str, code: str, est_s: float = 0.1, **kwargs) -> Job:
    return Job(name, [sys.executable, "-c", code], est_s=est_s, **kwargs)


def test_run_jobs_in_order_within_workers_and_budget(tmp_path):
    states = []
    records = tmp_path / "results.jsonl"
    write = "import json; open({!r}, 'a').write(json.dumps({{'key': {!r}, 'returncode': {}}}) + '\\n')"
    jobs = [
        _job("quick", "import time; time.sleep(0.3)"),
        _job("fails", "raise SystemExit(3)"),
        _job("after fails", "pass", after="fails"),
        _job("too long", "pass", est_s=1e6),
        _job("never ends", "import time; time.sleep(60)"),
        _job("limited", "import sys; print(sys.argv[-1])", reserve_s=1.0),
        _job("after quick", "pass", after="quick"),
        # a sweep exits 0 whatever its run did: its record decides
        _job("recorded ok", write.format(str(records), "a", 0), records=records, key="a"),
        _job("recorded failure", write.format(str(records), "b", 1), records=records, key="b"),
        _job("no record", "pass", records=records, key="c"),
    ]
    started = time.monotonic()
    run_jobs(jobs, workers=2, deadline=started + 8.0, log_dir=tmp_path, record=lambda js: states.append(
        sum(j.status == "running" for j in js)), poll_s=0.05)  # fmt: skip
    assert time.monotonic() - started < 30
    status = {j.name: j.status for j in jobs}
    assert status == {
        "quick": "ok", "fails": "failed", "after fails": "not started", "too long": "not started",
        "never ends": "stopped", "limited": "ok", "after quick": "ok", "recorded ok": "ok",
        "recorded failure": "failed", "no record": "failed",
    }  # fmt: skip
    assert max(states) <= 2
    assert jobs[1].returncode == 3 and "did not succeed" in jobs[2].note and "would not fit" in jobs[3].note
    assert jobs[4].note == "stopped at the deadline" and jobs[4].ended_s >= 7.9
    assert "return code 1" in jobs[8].note and "no record of c" in jobs[9].note
    # The time-limited job was told the seconds left to the deadline less its reserve and start-up.
    limit = float((tmp_path / "limited.log").read_text().strip().split("=")[1])
    assert jobs[5].argv[-1].startswith("--train_time_limit_s=") and 1.0 <= limit <= 8.0


def test_runs_an_earlier_session_recorded_are_not_started_again(tmp_path):
    records = tmp_path / "results.jsonl"
    records.write_text('{"key": "done", "returncode": 0}\n{"key": "broke", "returncode": 1}\n')
    ran = tmp_path / "ran"

    def touch(name: str) -> str:
        return f"open({str(ran)!r}, 'a').write({name!r} + '\\n')"

    jobs = [
        _job("decode", touch("decode")),
        _job("done", touch("done"), records=records, key="done", after="decode"),
        _job("broke", touch("broke"), records=records, key="broke", after="decode"),
        _job("other decode", touch("other decode")),
        _job("done too", touch("done too"), records=records, key="done", after="other decode"),
    ]
    marked = gpu_session.skip_recorded(jobs)
    assert [j.name for j in marked] == ["done", "done too", "other decode"]
    assert [j.status for j in jobs] == ["pending", "recorded", "pending", "not needed", "recorded"]
    run_jobs(jobs, workers=2, deadline=time.monotonic() + 20, log_dir=tmp_path, poll_s=0.05)
    # the failed record is the sweep's to judge: its job runs (and, writing no record, fails)
    assert sorted(ran.read_text().split()) == ["broke", "decode"]
    assert [j.status for j in jobs] == ["ok", "recorded", "failed", "not needed", "recorded"]


def test_a_dependency_on_no_job_is_refused(tmp_path):
    with pytest.raises(ValueError, match="names no job"):
        run_jobs([_job("a", "pass", after="typo")], workers=1, deadline=time.monotonic() + 5, log_dir=tmp_path)


def test_an_error_in_the_loop_stops_the_running_jobs(tmp_path):
    jobs = [_job("sleeper", "import time; time.sleep(60)")]

    def broken(js):
        if any(j.status == "running" for j in js):
            raise RuntimeError("recording failed")

    with pytest.raises(RuntimeError):
        run_jobs(jobs, workers=1, deadline=time.monotonic() + 30, log_dir=tmp_path, record=broken, poll_s=0.05)
    assert jobs[0].status == "stopped" and jobs[0].proc.poll() is not None


def test_bundle_keeps_results_and_leaves_weights_out(tmp_path, monkeypatch):
    out = tmp_path / "results"
    (out / "runs" / "a" / "checkpoint-10").mkdir(parents=True)
    for name in ("results.jsonl", "results.md", "plot.png", "runs/a/all_results.json", "runs/a/model.safetensors",
                 "runs/a/checkpoint-10/trainer_state.json"):  # fmt: skip
        (out / name).write_text("x")
    path = tmp_path / "b.tar.gz"
    assert gpu_session.bundle(path, [out]) == 4
    with tarfile.open(path) as tar:
        assert sorted(tar.getnames()) == [
            "results/plot.png", "results/results.jsonl", "results/results.md", "results/runs/a/all_results.json",
        ]  # fmt: skip
    # Too large for the device tool: the records, tables and plots alone.
    monkeypatch.setattr(gpu_session, "MAX_BUNDLE_BYTES", 1)
    assert gpu_session.bundle(path, [out]) == 3
    with tarfile.open(path) as tar:
        assert "results/runs/a/all_results.json" not in tar.getnames()
    # A folder outside the repository and the bundle's folder is named below its parent.
    elsewhere = tmp_path / "x" / "y"
    elsewhere.mkdir(parents=True)
    (elsewhere / "results.md").write_text("y")
    monkeypatch.setattr(gpu_session, "MAX_BUNDLE_BYTES", 2**20)
    (tmp_path / "z").mkdir()
    gpu_session.bundle(tmp_path / "z" / "b.tar.gz", [elsewhere])
    with tarfile.open(tmp_path / "z" / "b.tar.gz") as tar:
        assert tar.getnames() == ["y/results.md"]


def test_a_missing_data_root_says_how_to_make_one(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_session.main(["--data_root", str(tmp_path / "nothing"), "--out", str(tmp_path)])
    assert "--stage FOLDER" in capsys.readouterr().err


def _without(monkeypatch, *names: str) -> None:
    import importlib

    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name in names:
            raise ImportError(f"pyarrow>=24.0.0 is required for {name} (fake)")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)


def test_preflight_leaves_out_the_plan_whose_packages_are_missing(monkeypatch, capsys):
    _without(monkeypatch, "datasets")
    versions, plans = gpu_session.preflight(("translation", "cifar"))
    assert plans == ("cifar",)  # the CIFAR example needs no datasets: its runs still go
    assert "torch " in versions and "datasets" not in versions
    assert "leaving out the translation plan: datasets (ImportError: pyarrow>=24.0.0" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="cannot run: datasets"):  # nothing left of what was asked
        gpu_session.preflight(("translation",))


def test_preflight_stops_when_a_package_both_plans_need_is_missing(monkeypatch):
    _without(monkeypatch, "accelerate")
    with pytest.raises(SystemExit, match=r"cannot run: accelerate \(ImportError.*--stage"):
        gpu_session.preflight(("translation", "cifar"))


def test_the_fsdp2_benchmark_runs_once(tmp_path):
    (job,) = gpu_session.benchmark_jobs(tmp_path, smoke=False)
    assert job.argv[1].endswith("benchmarks/bench_fsdp2_gpu.py") and "--device" not in job.argv  # CUDA
    assert job.argv[job.argv.index("--out") + 1] == str(tmp_path / "fsdp2_cuda.json")
    (tmp_path / "fsdp2_cuda.json").write_text("{}")
    assert gpu_session.benchmark_jobs(tmp_path, smoke=False) == []  # a later session does not repeat it
