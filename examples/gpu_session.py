#!/usr/bin/env python
"""Everything the translation and CIFAR examples still ask of a GPU, in one command, side by side
on the one device, inside a fixed time budget.

A lent GPU comes for minutes, not hours, so this script turns a budget into as many of the
wanted runs as fit, in priority order, and leaves the rest for the next time:

* **FSDP2 on NCCL** (``benchmarks/bench_fsdp2_gpu.py``, about a minute, first): GradInit on a
  sharded model against the unsharded one, memory by ``torch.cuda.max_memory_allocated``, time
  per iteration, and the agreement of the scales; left out once ``benchmarks/results/gpu_fsdp2/``
  holds its result.
* **translation** (``no_warmup.py``): the ``transformer_iwslt_de_en`` shape in the paper's regime
  (``--recipe paper``: fairseq's init, no clipping, 4,096-token batches, 100k-update schedule
  horizon, GradInit with the paper's settings) at the paper's Adam lr 5e-4: GradInit, the
  default, fairseq's inverse-sqrt warmup (4,000 updates) and T-Fixup first, then LSUV and lr
  1e-3. Each run trains until the budget's deadline (``--train_time_limit_s``), then decodes
  BLEU on the test split (no validation pass: nothing is tuned here, and it would halve the
  decoding reserve), so every run ends inside the budget; the steps reached are in the records.
* **CIFAR-10** (``sweep_cifar.py``): the paper's five columns at full size (VGG-19 with and
  without BN, ResNet-110 with and without BN, ResNet-1202 with BN), first epoch, every init of
  the paper's table (Kaiming, +1 epoch warmup, +1 epoch constant lr, MetaInit, GradInit), seed 0
  of every column before seed 1, then Fixup (on ``resnet110_nobn``, the no-BN ResNet with
  Fixup's scalar biases and multipliers; the table's column is the authors' plain
  ``resnet110_nobn_paper``), LSUV, and the MetaInit paper's sign-SGD MetaInit. The table's
  MetaInit row is the one the GradInit authors ran (``PAPER_METAINIT``: Adam on the scales, 391
  steps of 128), about 11 epochs of training in cost (``cifar_est``: 530 s on VGG-19, 1,160 s on
  ResNet-110 with twelve runs sharing the GPU): on VGG-19 it starts only with a ``--budget_s``
  above the default, on ResNet-110 never inside one device call (600 s at most).
  The lr is held at 0.1 (a 200-epoch cosine schedule's first
  epoch), so ``constant_with_warmup`` is the schedule: the warmup variant ramps linearly from 0
  to 0.1 over its epoch, the constant-lr variant spends its epoch at ``--const_lr`` 0.01, the
  others run at 0.1. ResNet-1202 is last: its rough epoch time (``EPOCH_S``, a guess) does not
  fit the default budget, so its runs wait for a longer one.

A run is started only if its rough duration (``cifar_est``, from the H200 session's times) fits
before the deadline; at the deadline whatever still runs is stopped and counts as not done. A
job is "ok" only if its sweep recorded the run as a success.
Records go to the examples' own result folders (``results.jsonl``, the sweep scripts' format),
so starting the same command again, in a later session, skips every run already recorded and
goes on with the next ones. At the end both sweeps' tables and plots are rewritten
(``--report_only``), ``session.json`` lists every job (done, failed, stopped, not started) with
its times, and ``--bundle`` packs the result folders (records, reports, per-run JSON/PNG/text
files and logs; no weights) into one ``.tar.gz``, once straight after the runs and again after
the reports (the records are what counts; the tables can be rebuilt with ``--report_only``).

TF32 matrix products are on for every run (``--tf32 true``): a deviation from the paper's fp32,
taken for throughput in a budget of minutes; it is in every run's command.

Preparing a lent H200 (bare: no ``datasets``, older ``transformers``) from this machine::

    python examples/gpu_session.py --stage .devdata     # data + wheels into an ignored folder
    # device run, carry [".devdata"]:
    END=$(( $(date +%s) + 530 )); python3 -m pip install -q --no-index --no-deps --no-compile \\
        --target /tmp/site .devdata/whl/*.whl && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 \\
        examples/gpu_session.py --data_root .devdata --end_by $END --workers 12 \\
        --bundle $OUT/gpu_session.tar.gz 2>&1 | tee $OUT/session.log
    # (device timeout_s 560: a session's 15 device minutes hold the machine's start, this call
    # and a short rerun; at 480 s GradInit's 780 iterations still leave it minutes of training)

The plumbing on a CPU, in two minutes (tiny models, built-in data, results under ``--out``)::

    python examples/gpu_session.py --smoke --out runs/gpu_smoke --budget_s 150 --workers 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE / "common"))  # reporting, shared by the examples
sys.path[:0] = [str(HERE / "translation"), str(HERE / "cnn")]  # the sweeps, for their run keys

import no_warmup  # noqa: E402
import sweep_cifar  # noqa: E402
from reporting import machine_description, read_jsonl  # noqa: E402

TRANSLATION_OUT = HERE / "translation" / "results" / "gpu_paper_iwslt_shape"
CIFAR_OUT = HERE / "cnn" / "results" / "gpu_paper_first_epoch"
FSDP2_OUT = REPO / "benchmarks" / "results" / "gpu_fsdp2"

# The paper's Table 1 columns, and its rows as sweep_cifar.py variants. Its ResNet-110 without BN
# is the authors' plain one (``_nobn_paper``); Fixup runs on the network built for it (``_nobn``).
CIFAR_COLUMNS = ("vgg19_bn", "resnet110_nobn_paper", "vgg19_nobn", "resnet110_bn", "resnet1202_bn")
# The paper's MetaInit rows came from the authors' own MetaInit (Adam on the scales, one pass over
# the training set at the training batch: 391 steps of 128), so that is the row compared with
# them; the MetaInit paper's sign-SGD (``metainit``) runs after the table.
PAPER_METAINIT = "metainit:optimizer=adam,steps=391"
PAPER_INITS = ("default", "default+warmup", "default+constlr", "gradinit", PAPER_METAINIT)
# Rough seconds of one first-epoch run on a shared GPU (model's epoch plus the initialiser's
# extra), from the H200 session of 2026-12-04, twelve runs side by side: VGG-19 52-71 s a run
# (its training 31-48 s), GradInit 121 s of which 55 s GradInit, MetaInit 221 s of which 164 s
# MetaInit, ResNet-110 129 s (training 104 s); the H100 session's 40 s and 60 s (four runs at
# a time) let three ResNet-110 runs start that the deadline then stopped. Only used to leave
# out runs that could not finish before the deadline; ResNet-1202's is a guess.
EPOCH_S = {"vgg19": 45.0, "resnet110": 100.0, "resnet1202": 600.0, "resnet20": 5.0}
INIT_EXTRA_EPOCHS = {"gradinit": 1.6, "metainit": 4.0, "lsuv": 0.2}
# MetaInit's share above is 100 steps at batch 192; its cost grows with the steps and the batch.
METAINIT_STEP_EPOCHS = {"sign_sgd": 4.0 / 100, "adam": 4.0 / 100 * 128 / 192}

# Seconds a translation run keeps after its training deadline: evaluation and prediction
# (beam 5, 2,000 sentences; a collapsed model decodes to the length limit) and saving.
TRANSLATION_RESERVE_S = 100.0
FINAL_RESERVE_S = 30.0  # stopping runs, the bundle, the reports and the bundle again
STARTUP_S = 30.0  # a run's interpreter and imports, before its own clock starts (many start at once)
# A process group of its own; Python < 3.11 has no process_group, and a new session is the way.
NEW_GROUP: dict[str, Any] = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
DEFAULT_BUDGET_S = 480.0


@dataclass
class Job:
    """One run, as a command; ``after`` names a job that must have succeeded first."""

    name: str
    argv: list[str]
    est_s: float
    after: str | None = None
    # Seconds kept after training for evaluation: the job gets --train_time_limit_s = the time
    # left to the deadline less these (None: no time limit).
    reserve_s: float | None = None
    records: Path | None = None  # the sweep's results.jsonl, and the run's key in it
    key: str | None = None
    status: str = "pending"  # pending, running, ok, failed, stopped, not started, recorded, not needed
    returncode: int | None = None
    started_s: float | None = None
    ended_s: float | None = None
    note: str = ""
    proc: Any = field(default=None, repr=False)
    log: Any = field(default=None, repr=False)


def cifar_est(model: str, variant: str) -> float:
    family = model.split("_")[0]
    init = sweep_cifar.base_init(variant)
    extra = INIT_EXTRA_EPOCHS.get(init, 0.0)
    if init == "metainit":
        options = dict(sweep_cifar.init_options(variant))
        extra = METAINIT_STEP_EPOCHS[options.get("optimizer", "sign_sgd")] * int(options.get("steps", 100))
    return 15.0 + EPOCH_S.get(family, 60.0) * (1.0 + extra)


def translation_jobs(out: Path, data_root: Path | None, smoke: bool) -> list[Job]:
    py = sys.executable
    if smoke:
        data = ["--recipe", "paper_small", "--builtin_train_size", "200", "--max_tokens", "300",
                "--gradinit_max_tokens", "400", "--gradinit_iters", "3", "--config_overrides",
                "d_model=32,encoder_layers=1,decoder_layers=1,encoder_ffn_dim=64,decoder_ffn_dim=64",
                "--vocab_size", "300", "--max_steps", "10000", "--max_eval_samples", "8", "--max_predict_samples",
                "8", "--generation_max_length", "16", "--generation_num_beams", "1"]  # fmt: skip
        plan = [("fairseq/gradinit", "1e-3", False), ("fairseq/default+warmup", "1e-3", True)]
    else:
        data = ["--recipe", "paper", "--data_dir", str(data_root / "multi30k" / "raw"), "--validation_split", "val",
                "--test_split", "test_2016_flickr", "--max_steps", "100000", "--per_device_eval_batch_size", "250",
                "--generation_max_length", "80", "--tf32", "true", "--save_strategy", "no",
                # BLEU on the test split only: the validation pass would take half the reserve
                "--do_eval", "false"]  # fmt: skip
        plan = [("fairseq/gradinit", "5e-4", False), ("fairseq/default", "5e-4", False),
                ("fairseq/default+warmup", "5e-4", True), ("fairseq/tfixup", "5e-4", False),
                ("fairseq/lsuv", "5e-4", False), ("fairseq/gradinit", "1e-3", False),
                ("fairseq/default", "1e-3", False)]  # fmt: skip
    reserve = 15.0 if smoke else TRANSLATION_RESERVE_S
    jobs = []
    for variant, lr, warmup in plan:
        argv = [py, str(HERE / "translation" / "no_warmup.py"), "--out", str(out), "--jobs", "1",
                "--variants", variant, "--adam_lrs", lr, "--seeds", "0", "--logging_steps", "25"]  # fmt: skip
        if warmup:
            argv += ["--warmup", "20" if smoke else "4000", "--warmup_scheduler", "inverse_sqrt"]
        argv += ["--", *data, "--first_step_report", "true", "--save_init_scales", "true"]
        # To start, a run needs its reserve, the initialiser (GradInit's 780 iterations: minutes
        # on a shared GPU) and some training.
        init_s = (5.0 if smoke else 200.0) if "gradinit" in variant else 0.0
        est = reserve + init_s + (5.0 if smoke else 60.0)
        key = no_warmup.Run(variant, "adam", float(lr), None, 0).key
        jobs.append(Job(f"translation {variant} lr {lr}", argv, est_s=est, reserve_s=reserve,
                        records=out / "results.jsonl", key=key))  # fmt: skip
    return jobs


def benchmark_jobs(out: Path, smoke: bool) -> list[Job]:
    """``benchmarks/bench_fsdp2_gpu.py``: GradInit on an FSDP2 model on NCCL against the unsharded
    model (memory by ``max_memory_allocated``, time, agreement of the scales), the one measurement
    the sharding work still needs a GPU for; about a minute, so it goes first, and it is left out
    once its result file exists."""
    result = out / ("fsdp2_cpu.json" if smoke else "fsdp2_cuda.json")
    if result.exists():
        return []
    argv = [sys.executable, str(REPO / "benchmarks" / "bench_fsdp2_gpu.py"), "--out", str(result)]
    if smoke:
        argv += ["--device", "cpu", "--width", "64", "--layers", "2", "--iters", "3", "--worlds", "1"]
    return [Job("benchmark fsdp2", argv, est_s=30.0 if smoke else 90.0)]


def cifar_plan(smoke: bool) -> list[tuple[str, str, int]]:
    """(model, variant, seed) in the order they are wanted."""
    if smoke:
        return [("resnet20_bn", "default", 0), ("resnet20_nobn", "gradinit", 0), ("resnet20_nobn", "fixup", 0)]
    main_columns = CIFAR_COLUMNS[:4]
    plan = [(m, v, s) for s in (0, 1) for m in main_columns for v in PAPER_INITS]
    plan += [("resnet1202_bn", v, 0) for v in ("default", "gradinit")]
    plan += [("resnet110_nobn", "fixup", s) for s in (0, 1)]
    plan += [(m, "lsuv", s) for s in (0, 1) for m in main_columns]
    plan += [(m, "metainit", s) for s in (0, 1) for m in main_columns]  # the MetaInit paper's sign-SGD
    plan += [("resnet1202_bn", v, 0) for v in PAPER_INITS if v not in ("default", "gradinit")]
    plan += [("resnet1202_bn", v, 1) for v in PAPER_INITS]
    return plan


def cifar_jobs(out: Path, data_root: Path | None, smoke: bool) -> list[Job]:
    py = sys.executable
    if smoke:
        data = ["--width_mult", "0.25", "--builtin_train_size", "256", "--builtin_test_size", "128",
                "--per_device_train_batch_size", "64", "--gradinit_iters", "2"]  # fmt: skip
        cache = []
    else:
        archive = str(data_root / "cifar10" / "cifar10-jpeg.tar.xz")
        data = ["--data_dir", archive, "--cutout", "16", "--per_device_eval_batch_size", "1000", "--tf32", "true"]
        # Decoding 60,000 JPEGs once, before the runs that read the decoded cache.
        decode = (f"import sys; sys.path.insert(0, {str(HERE / 'cnn')!r}); "
                  f"from cifar_data import load_cifar; load_cifar({archive!r})")  # fmt: skip
        cache = [Job("decode CIFAR-10 once", [py, "-c", decode], est_s=120.0)]
    recipe = ["--num_train_epochs", "1", "--lr_scheduler_type", "constant_with_warmup", *data]
    jobs = []
    for model, variant, seed in cifar_plan(smoke):
        argv = [py, str(HERE / "cnn" / "sweep_cifar.py"), "--out", str(out), "--jobs", "1", "--plot_epochs", "1",
                "--models", model, "--variants", variant, "--seeds", str(seed), "--", *recipe]  # fmt: skip
        jobs.append(Job(f"cifar {model} {variant} seed {seed}", argv, est_s=cifar_est(model, variant),
                        records=out / "results.jsonl", key=sweep_cifar.Run(model, variant, seed).key,
                        after=cache[0].name if cache else None))  # fmt: skip
    return cache + jobs


def run_jobs(jobs: list[Job], *, workers: int, deadline: float, log_dir: Path, record: Any = None,
             poll_s: float = 0.5, clock: Any = time.monotonic) -> list[Job]:  # fmt: skip
    """Run ``jobs`` in their order, ``workers`` at a time, each in its own process group. A job is
    started only when its ``after`` job has succeeded and ``est_s`` fits before ``deadline`` (a
    ``clock()`` value); at the deadline, running jobs are stopped (SIGTERM, then SIGKILL). A job
    with ``records``/``key`` is "ok" only if its sweep recorded that run as a success (the sweep
    scripts exit 0 after recording a failed run). ``record(jobs)`` is called after every change,
    so a killed session still leaves its state."""
    names = {j.name for j in jobs}
    unknown = sorted({j.after for j in jobs if j.after and j.after not in names})
    if unknown:
        raise ValueError(f"'after' names no job: {unknown}")
    log_dir.mkdir(parents=True, exist_ok=True)
    start = clock()
    by_name = {j.name: j for j in jobs}

    def changed() -> None:
        if record is not None:
            record(jobs)

    def stop(stopping: list[Job], why: str) -> None:
        # Every group is asked first, then all are waited for together: one slow run must not
        # cost the others' share of the time left.
        for job in stopping:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.proc.pid, signal.SIGTERM)
        wait_until = time.monotonic() + 10
        for job in stopping:
            try:
                job.proc.wait(timeout=max(0.0, wait_until - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job.proc.pid, signal.SIGKILL)
                job.proc.wait()
            job.log.close()
            job.status, job.returncode, job.ended_s, job.note = "stopped", job.proc.returncode, clock() - start, why
        if stopping:
            changed()

    def finished(job: Job, code: int) -> None:
        job.log.close()
        job.status, job.returncode, job.ended_s = ("ok" if code == 0 else "failed"), code, clock() - start
        if code == 0 and job.records is not None:
            mine = [r for r in read_jsonl(job.records) if r.get("key") == job.key]
            if not mine:
                job.status, job.note = "failed", f"no record of {job.key} in {job.records}"
            elif mine[-1].get("returncode") != 0:
                job.status = "failed"
                job.note = (
                    f"the run failed (return code {mine[-1].get('returncode')}); see its log in the sweep's logs/"
                )
        changed()

    def launch(job: Job, now: float) -> None:
        if job.reserve_s is not None:
            # The run counts its limit from its own start, which comes after the interpreter and
            # its imports: STARTUP_S of that is taken off as well.
            limit = max(1.0, deadline - now - job.reserve_s - STARTUP_S)
            job.argv = [*job.argv, f"--train_time_limit_s={limit:.0f}"]
        job.log = open(log_dir / (job.name.replace(" ", "_").replace("/", "-") + ".log"), "w")
        try:
            # Its own process group (so a stop reaches its children), but the caller's session,
            # so whatever ends this session's processes also ends the runs.
            job.proc = subprocess.Popen(job.argv, stdout=job.log, stderr=subprocess.STDOUT, **NEW_GROUP)
        except OSError as err:
            job.log.close()
            job.status, job.note = "failed", f"could not start: {err}"
        else:
            job.status, job.started_s = "running", now - start
        changed()

    try:
        while True:
            now = clock()
            for job in [j for j in jobs if j.status == "running"]:
                code = job.proc.poll()
                if code is not None:
                    finished(job, code)
            if now >= deadline:
                stop([j for j in jobs if j.status == "running"], "stopped at the deadline")
            running = sum(j.status == "running" for j in jobs)
            for job in jobs:
                if job.status != "pending":
                    continue
                dep = by_name.get(job.after) if job.after else None
                if dep is not None and dep.status in ("failed", "stopped", "not started"):
                    job.status, job.note = "not started", f"{dep.name!r} did not succeed"
                    changed()
                elif now + job.est_s > deadline:
                    job.status, job.note = "not started", f"about {job.est_s:.0f} s would not fit before the deadline"
                    changed()
                elif running < workers and (dep is None or dep.status == "ok"):
                    launch(job, now)
                    running += job.status == "running"
            if not any(j.status in ("pending", "running") for j in jobs):
                return jobs
            time.sleep(poll_s)
    finally:  # an error, Ctrl-C or SIGTERM here must not leave runs going on
        stop([j for j in jobs if j.status == "running"], "stopped: the session itself stopped")


def skip_recorded(jobs: list[Job]) -> list[Job]:
    """Mark ``recorded`` every job whose sweep already holds a successful record of its run (an
    earlier session's), and ``not needed`` a job that only recorded-or-not-needed jobs wait for
    (the CIFAR decode, once every CIFAR run is recorded): on a lent machine each start costs a
    worker slot and seconds of imports. Failed records are left to the sweeps, which decide
    themselves whether to run them again. Returns the jobs so marked."""
    marked = []
    done: dict[Path, set] = {}  # each sweep's records read once, not once per job
    for job in jobs:
        if job.status == "pending" and job.records is not None and job.key is not None:
            if job.records not in done:
                done[job.records] = {r.get("key") for r in read_jsonl(job.records) if r.get("returncode") == 0}
            if job.key in done[job.records]:
                job.status, job.note = "recorded", f"{job.key} is already in {job.records}"
                marked.append(job)
    for job in jobs:
        waiting = [j for j in jobs if j.after == job.name]
        if job.status == "pending" and waiting and all(j.status in ("recorded", "not needed") for j in waiting):
            job.status, job.note = "not needed", "every job that waits for it is already recorded"
            marked.append(job)
    return marked


def write_state(path: Path, jobs: list[Job], info: dict[str, Any]) -> None:
    # Not asdict: it would deep-copy the running processes.
    rows = [{f.name: getattr(j, f.name) for f in fields(j) if f.name not in ("proc", "log")} for j in jobs]
    path.write_text(json.dumps({**info, "jobs": rows}, indent=1, default=str) + "\n")


def report(translation_out: Path, cifar_out: Path, timeout_s: float | None = None) -> None:
    """Both sweeps' tables and plots, from every record in their files (each within ``timeout_s``:
    they can be rebuilt later with the sweeps' ``--report_only``; the records are what counts)."""
    py = sys.executable
    commands = []
    if (translation_out / "results.jsonl").exists():
        commands.append(
            [py, str(HERE / "translation" / "no_warmup.py"), "--out", str(translation_out), "--report_only"]
        )
    if (cifar_out / "results.jsonl").exists():
        commands.append([py, str(HERE / "cnn" / "sweep_cifar.py"), "--out", str(cifar_out), "--report_only",
                         "--plot_epochs", "1"])  # fmt: skip
    for cmd in commands:
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, timeout=timeout_s)


BUNDLED = (".json", ".jsonl", ".md", ".png", ".txt", ".log")


MAX_BUNDLE_BYTES = 15 * 2**20  # the device tool returns files of at most 16 MiB


def bundle(path: Path, folders: list[Path]) -> int:
    """Pack ``folders`` without model weights or checkpoints: the files a result needs (records,
    reports, per-run JSON, plots, predictions, logs), named by their path in the repository (so
    ``tar xzf`` in the repository's root puts them in place), else by their path below
    ``path``'s folder, else below their folder's parent. Over ``MAX_BUNDLE_BYTES``, it is written
    again with the records, tables, plots and session files alone."""
    root, here = REPO.resolve(), path.resolve().parent
    files = []
    for folder in folders:
        folder = folder.resolve()
        for file in sorted(folder.rglob("*")):
            inside = file.relative_to(folder).parts
            if not file.is_file() or file.suffix not in BUNDLED or file == path.resolve():
                continue
            if any(part.startswith("checkpoint-") for part in inside):
                continue
            base = next((b for b in (root, here) if file.is_relative_to(b)), folder.parent)
            files.append((file, str(file.relative_to(base)), inside[0] != "runs" and file.suffix != ".log"))
    for slim in (False, True):
        with tarfile.open(path, "w:gz") as tar:
            for file, name, essential in files:
                if essential or not slim:
                    tar.add(file, arcname=name)
        if path.stat().st_size <= MAX_BUNDLE_BYTES:
            break
    return sum(1 for *_, essential in files if essential or not slim)


WHEELS = ("datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19", "fsspec==2026.9.0", "transformers==5.24.0")


def stage(folder: Path) -> None:
    """Copy the data and download the wheels a bare H200 lacks into ``folder`` (ignored by git)."""
    data = Path(os.environ.get("HF_GRADINIT_DATA", REPO.parent / "shared" / "data"))
    (folder / "multi30k").mkdir(parents=True, exist_ok=True)
    (folder / "cifar10").mkdir(parents=True, exist_ok=True)
    (folder / "multi30k" / "raw").mkdir(exist_ok=True)
    for split in ("train", "val", "test_2016_flickr"):
        for lang in ("de", "en"):
            shutil.copy2(data / "multi30k" / "raw" / f"{split}.{lang}", folder / "multi30k" / "raw")
    shutil.copy2(data / "cifar10" / "cifar10-jpeg.tar.xz", folder / "cifar10")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux2014_x86_64",
                    "-d", str(folder / "whl"), *WHEELS], check=True)  # fmt: skip
    print(f"staged {folder}: " + ", ".join(sorted(p.name for p in folder.rglob("*") if p.is_file()))[:2000])


# What each plan imports: a machine without the translation extras still runs the CIFAR plan.
NEEDS = {
    "both": ("torch", "transformers", "accelerate"),
    "translation": ("datasets", "pyarrow", "sacrebleu", "tokenizers"),
}


def preflight(plans: tuple[str, ...] = ("translation", "cifar")) -> tuple[str, tuple[str, ...]]:
    """The versions the runs will use and the plans they allow, in seconds rather than after a
    failed first run (a lent machine starts bare): a ``SystemExit`` naming what is missing when
    no asked-for plan can run; a plan whose own packages are missing is left out, with a warning."""
    import importlib

    found, missing = [], {}
    for name in (*NEEDS["both"], *NEEDS["translation"]):
        try:
            found.append(f"{name} {importlib.import_module(name).__version__}")
        except Exception as err:  # an old pyarrow fails datasets' import with an error of its own
            missing[name] = f"{name} ({type(err).__name__}: {err})"
    blocked = {plan: [missing[n] for n in NEEDS["both"] + NEEDS.get(plan, ()) if n in missing] for plan in plans}
    runnable = tuple(plan for plan in plans if not blocked[plan])
    if not runnable:
        why = "; ".join(dict.fromkeys(m for ms in blocked.values() for m in ms))
        raise SystemExit(f"gpu_session.py: cannot run: {why}. Carry wheels (--stage) or install.")
    for plan in plans:
        if blocked[plan]:
            print(f"gpu_session.py: WARNING: leaving out the {plan} plan: " + "; ".join(blocked[plan]), flush=True)
    import torch

    if not torch.cuda.is_available():
        return ", ".join([*found, "no cuda device"]), runnable
    # What every run does first: transformers' --tf32 switch, then fp32 matmul and convolution.
    import tempfile

    from transformers import TrainingArguments

    with tempfile.TemporaryDirectory() as tmp:
        TrainingArguments(output_dir=tmp, tf32=True, report_to="none")
    x = torch.randn(256, 256, device="cuda")
    conv = torch.nn.Conv2d(3, 8, 3).cuda()
    (x @ x).sum().item()
    conv(torch.randn(2, 3, 32, 32, device="cuda")).sum().item()
    return ", ".join([*found, f"cuda {torch.cuda.get_device_name(0)} (tf32 matmul and conv ran)"]), runnable


def main(argv: list[str] | None = None) -> list[Job]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--budget_s", type=float, default=DEFAULT_BUDGET_S, help="seconds from start to the end of the last run"
    )
    parser.add_argument("--end_by", type=float, default=None, metavar="UNIX_SECONDS",
                        help="also end by this wall-clock time (e.g. $(( $(date +%%s) + 530 )), taken before "
                        "installing wheels), whichever of it and --budget_s comes first")  # fmt: skip
    parser.add_argument("--workers", type=int, default=12, help="runs at once on the one GPU")
    parser.add_argument("--data_root", type=Path, default=None, help="folder with multi30k/raw and cifar10/")
    parser.add_argument("--only", choices=("benchmark", "translation", "cifar"), default=None,
                        help="one of the three plans")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny CPU runs on built-in data (plumbing check)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_session",
                        help="session.json and the job logs (with --smoke: the results too)")  # fmt: skip
    parser.add_argument("--bundle", type=Path, default=None, help="write the results as this .tar.gz")
    parser.add_argument("--stage", type=Path, default=None, metavar="FOLDER",
                        help="only copy data and wheels for a device into FOLDER")  # fmt: skip
    args = parser.parse_args(argv)
    if args.stage is not None:
        stage(args.stage)
        return []
    if args.smoke:
        translation_out, cifar_out, fsdp2_out = args.out / "translation", args.out / "cifar", args.out / "benchmarks"
    else:
        if args.data_root is None or not (args.data_root / "multi30k" / "raw").is_dir():
            parser.error("--data_root must name a folder with multi30k/raw/ and cifar10/cifar10-jpeg.tar.xz "
                         "(python examples/gpu_session.py --stage FOLDER makes one from ../shared/data).")  # fmt: skip
        translation_out, cifar_out, fsdp2_out = TRANSLATION_OUT, CIFAR_OUT, FSDP2_OUT
    budget = args.budget_s if args.end_by is None else min(args.budget_s, args.end_by - time.time())
    if not budget > FINAL_RESERVE_S or args.workers < 1:
        parser.error(f"the budget ({budget:.0f} s) must exceed {FINAL_RESERVE_S:.0f} s and --workers be >= 1.")
    deadline = time.monotonic() + budget - FINAL_RESERVE_S
    # The device tool ends a command with SIGTERM: exit through run_jobs' cleanup, not past it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    versions, plans = preflight(("benchmark", "translation", "cifar") if args.only is None else (args.only,))
    print(versions, flush=True)
    jobs = []
    if "benchmark" in plans:
        jobs += benchmark_jobs(fsdp2_out, args.smoke)
    if "translation" in plans:
        jobs += translation_jobs(translation_out, args.data_root, args.smoke)
    if "cifar" in plans:
        jobs += cifar_jobs(cifar_out, args.data_root, args.smoke)
    state_dir = args.out / "session"
    state_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    info = {
        "command": " ".join(sys.argv),
        "machine": machine_description(),
        "budget_s": round(budget),
        "workers": args.workers,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
    }
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # many runs share the CPU cores
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # a lent machine reaches no hub
        os.environ.setdefault(name, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    skipped = skip_recorded(jobs)
    print(f"{len(jobs)} jobs ({len(skipped)} already recorded or not needed), budget {budget:.0f} s, "
          f"{args.workers} at once; logs in {state_dir}", flush=True)  # fmt: skip
    folders = [translation_out, cifar_out, fsdp2_out, state_dir]
    try:
        run_jobs(jobs, workers=args.workers, deadline=deadline, log_dir=state_dir,
                 record=lambda js: write_state(state_dir / "session.json", js, info))  # fmt: skip
    finally:
        info["wall_time_s"] = time.time() - started
        write_state(state_dir / "session.json", jobs, info)
        if args.bundle is not None:  # first the records, in case the reports outrun the command
            bundle(args.bundle, [p for p in folders if p.exists()])
    report(translation_out, cifar_out, timeout_s=max(5.0, FINAL_RESERVE_S - 15.0))
    for status in ("ok", "failed", "stopped", "not started", "recorded", "not needed"):
        names = [j.name for j in jobs if j.status == status]
        print(
            f"{status}: {len(names)}"
            + (f" ({'; '.join(names[:6])}{'; ...' if len(names) > 6 else ''})" if names else "")
        )
    if args.bundle is not None:
        n = bundle(args.bundle, [p for p in folders if p.exists()])
        print(f"bundle {args.bundle}: {n} files, {args.bundle.stat().st_size / 1e6:.1f} MB")
    return jobs


if __name__ == "__main__":
    main()
