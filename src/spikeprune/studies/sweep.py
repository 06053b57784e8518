"""Sweeps: seeds x variants (lottery) or seeds x densities (edge-popup) as independent jobs.

One command runs a grid of independent runs, at most ``jobs`` at a time, each in its own Python
process (``OMP_NUM_THREADS`` = ``threads``, default 1: N single-threaded jobs use N cores without
oversubscribing them), and writes one summary at the end::

    spikeprune lottery --dataset digits --seeds 0,1,2 --variants imp,sf-imp-1 --jobs 2 --out runs/sweep
    spikeprune edgepopup --dataset digits --seeds 0,1 --densities 0.1,0.5,0.9 --jobs 2 --out runs/ep

Layout (every run is an ordinary run directory of its command)::

    out/seed-<s>/<variant>/      a lottery run (rounds, masks, results.json)
    out/seed-<s>/dense/          the dense phase shared by the variants of seed s (hard-linked into each)
    out/seed-<s>/density-<d>/    an edge-popup search (or out/density-<d>/ without --seeds)
    out/jobs/<job>.json          what each job runs (its config), out/logs/<job>.log its output
    out/summary.json, summary.csv, summary.png   mean and 95 % CI over seeds (lottery),
    out/results.{json,csv,png}                   every seed's points (edge-popup)

Jobs run in one process group of their own and end with the sweep: when the parent is interrupted
(Ctrl-C, SIGTERM) it terminates the group; when it dies without a chance to (SIGKILL, a crash) every
job gets SIGTERM from the kernel (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere a watchdog thread that
notices the parent is gone). A terminated job stops like a killed run and resumes next time. Each
job holds its own run directory (:mod:`spikeprune.core.rundir`), the sweep holds ``out``.

Resumable: a finished job is skipped (its result file exists: :meth:`Job.done` asks the job's runner,
whose ``is_complete`` names that file), an interrupted one resumes from its last checkpoint (every job
runs with ``resume=True``). A failed job does not stop the others; the sweep then writes the summary of
what finished and raises ``ValueError`` naming the failed jobs and their logs. With ``jobs=1`` the runs
execute one after another in this process (no start-up cost).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from spikeprune.core.diagnostics import UserError
from spikeprune.core.config import from_mapping, to_dict
from spikeprune.engine.config import TrainConfig
from spikeprune.core.io import check_writable_dir, file_slug, read_json, write_csv, write_json
from spikeprune.core.rundir import RunResult, link_run, log

__all__ = ["Job", "edgepopup_sweep", "lottery_sweep", "run_job", "run_jobs", "train_jobs"]

JOB_KINDS = ("train", "lottery", "lottery-dense", "edgepopup")


@dataclass(frozen=True)
class Job:
    """One independent run: ``kind`` (train | lottery | lottery-dense | edgepopup), its full config as a
    dict (``to_dict`` of the config dataclass) and its run directory ``out``."""

    name: str
    kind: str
    config: dict[str, Any]
    out: str

    def done(self) -> bool:
        """True when the run is finished (it is then skipped), as its runner defines finished: the
        ``is_complete`` of :mod:`~spikeprune.engine.train` (train), :mod:`~spikeprune.tickets.lottery`
        (lottery; ``dense_complete`` for lottery-dense) and :mod:`~spikeprune.tickets.edgepopup`."""
        if self.kind == "train":
            from spikeprune.engine.train import is_complete

            return is_complete(self.out)
        if self.kind == "lottery-dense":
            from spikeprune.tickets.lottery import dense_complete

            return dense_complete(self.out)
        if self.kind == "lottery":
            from spikeprune.tickets.lottery import is_complete

            return is_complete(self.out, int(self.config["rounds"]))
        from spikeprune.tickets.edgepopup import is_complete

        return is_complete(self.out)


def _config(kind: str, values: dict[str, Any]) -> Any:
    if kind == "train":
        return from_mapping(TrainConfig, values, source="job")
    if kind in ("lottery", "lottery-dense"):
        from spikeprune.tickets.lottery import LotteryConfig

        return from_mapping(LotteryConfig, values, source="job")
    if kind == "edgepopup":
        from spikeprune.tickets.edgepopup import EdgePopupConfig

        return from_mapping(EdgePopupConfig, values, source="job")
    raise UserError(f"unknown job kind {kind!r}; one of {', '.join(JOB_KINDS)}")


#: the run-directory kind (spikeprune.core.rundir) of each job kind
_RUN_KIND = {"train": "train", "lottery-dense": "lottery", "lottery": "lottery", "edgepopup": "edgepopup"}


def execute(job: Job, *, progress: bool = False, log: Callable[[str], None] | None = log) -> None:
    """Run ``job`` in this process (resuming whatever it already did), holding its run directory."""
    from spikeprune.core.rundir import run_directory

    cfg = _config(job.kind, job.config)
    with run_directory(job.out, _RUN_KIND[job.kind]):
        _execute(job, cfg, progress, log)


def _execute(job: Job, cfg: Any, progress: bool, log: Callable[[str], None] | None) -> None:
    if job.kind == "train":
        from spikeprune.engine.train import fit

        fit(cfg, job.out, resume=True, progress=progress, log=log)
    elif job.kind == "lottery-dense":
        from spikeprune.tickets.lottery import train_dense

        train_dense(cfg, job.out, resume=True, progress=progress, log=log)
    elif job.kind == "lottery":
        from spikeprune.tickets.lottery import run_lottery

        run_lottery(cfg, job.out, resume=True, progress=progress, log=log)
    else:
        from spikeprune.tickets.edgepopup import search

        search(cfg, job.out, resume=True, progress=progress, log=log)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds: open atomic writes drop their temp files, locks are released


def _watch_parent(parent: int, period: float = 1.0) -> None:
    """Where PR_SET_PDEATHSIG does not exist: SIGTERM this process once its parent ``parent`` is gone."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(period)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="spikeprune-parent-watchdog", daemon=True).start()


def run_job(path: str | Path, parent: int | None = None) -> int:
    """Entry point of a job's process: run the job described by the JSON file ``path``; returns 0.

    ``parent``: the sweep's pid; the job ends (SIGTERM) when that process is gone.
    """
    import torch

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if parent is not None and not sys.platform.startswith("linux"):
        _watch_parent(parent)
    data = read_json(path)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    execute(Job(data["name"], data["kind"], data["config"], data["out"]), progress=False)
    return 0


# A job's process: on Linux, ask the kernel for SIGTERM when the sweep dies (PR_SET_PDEATHSIG = 1), then
# check the sweep did not die before that (its pid is argv[2]) - before the seconds importing torch takes.
_LAUNCH = """import os, signal, sys
parent = int(sys.argv[2])
if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
if os.getppid() != parent:
    sys.exit(143)
from spikeprune.studies.sweep import run_job
sys.exit(run_job(sys.argv[1], parent))
"""


def run_jobs(jobs: Sequence[Job], root: str | Path, *, max_jobs: int = 1, threads: int = 1,
             log: Callable[[str], None] | None = log) -> dict[str, str]:
    """Run ``jobs`` (skipping finished ones), at most ``max_jobs`` at a time; returns ``{name: status}``
    with status ``done`` (already finished), ``ok`` or ``failed (exit N), see <log>``.

    ``max_jobs = 1`` runs them in this process, in order (an error propagates); more runs each job as
    ``python -c ...run_job(root/jobs/<job>.json)`` with ``OMP_NUM_THREADS=threads`` and its output in
    ``root/logs/<job>.log``.
    """
    if not isinstance(max_jobs, int) or isinstance(max_jobs, bool) or max_jobs < 1:
        raise UserError(f"jobs must be a positive integer; got {max_jobs!r}")
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise UserError(f"threads must be a positive integer; got {threads!r}")
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise UserError(f"job names must be unique; got {names}")
    root = check_writable_dir(root)
    status: dict[str, str] = {}
    pending = []
    for job in jobs:
        if job.done():
            status[job.name] = "done"
        else:
            pending.append(job)
    if log and len(pending) < len(jobs):
        log(f"sweep: {len(jobs) - len(pending)} of {len(jobs)} jobs already finished")
    if max_jobs == 1:
        for i, job in enumerate(pending):
            if log:
                log(f"sweep: [{i + 1}/{len(pending)}] {job.name} -> {job.out}")
            execute(job, log=log)
            status[job.name] = "ok"
        return status

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    running: list[tuple[Job, subprocess.Popen, Any, float]] = []
    queue = list(pending)
    group = 0  # the jobs' process group (0: the next job starts a new one, led by itself)
    previous = _terminate_on_sigterm()
    try:
        while queue or running:
            while queue and len(running) < max_jobs:
                job = queue.pop(0)
                spec = root / "jobs" / f"{file_slug(job.name)}.json"
                write_json(spec, {"name": job.name, "kind": job.kind, "config": job.config, "out": job.out})
                logfile = root / "logs" / f"{file_slug(job.name)}.log"
                logfile.parent.mkdir(parents=True, exist_ok=True)
                handle = open(logfile, "a")  # appended: a resumed job keeps its earlier output
                # one process group for every job: killpg reaches them all, Ctrl-C reaches only the
                # sweep (the terminal signals its foreground group), which then stops them in order
                proc = subprocess.Popen([sys.executable, "-c", _LAUNCH, str(spec), str(os.getpid())],
                                        stdout=handle, stderr=subprocess.STDOUT, env=env,
                                        process_group=group if running else 0)
                group = group if running else proc.pid
                running.append((job, proc, handle, time.perf_counter()))
                if log:
                    log(f"sweep: started {job.name} (pid {proc.pid}; {len(queue)} queued) -> {logfile}")
            time.sleep(0.2)
            for item in list(running):
                job, proc, handle, start = item
                code = proc.poll()
                if code is None:
                    continue
                handle.close()
                running.remove(item)
                logfile = root / "logs" / f"{file_slug(job.name)}.log"
                status[job.name] = "ok" if code == 0 else f"failed (exit {code}), see {logfile}"
                if log:
                    log(f"sweep: {job.name} {status[job.name]} after {time.perf_counter() - start:.0f} s")
    finally:  # interrupted: stop the jobs this sweep started (they resume next time)
        _stop(running, group)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return status


def _terminate_on_sigterm() -> Any:
    """Make SIGTERM unwind this process (so the ``finally`` that stops the jobs runs); returns the
    previous handler, or None where none can be installed (not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _stop(running: list[tuple[Job, subprocess.Popen, Any, float]], group: int) -> None:
    """SIGTERM the jobs' process group, wait up to 10 s, then SIGKILL what is left."""
    if not running:
        return
    def signal_all(sig: int) -> None:
        try:
            os.killpg(group, sig)
        except (ProcessLookupError, PermissionError):
            for _, proc, _, _ in running:
                if proc.poll() is None:
                    proc.send_signal(sig)
    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for _, proc, _, _ in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_all(signal.SIGKILL)
            proc.wait()
    for _, _, handle, _ in running:
        handle.close()


def _raise_failures(status: dict[str, str]) -> None:
    failed = {n: s for n, s in status.items() if s.startswith("failed")}
    if failed:
        first = next(iter(failed.items()))
        raise UserError(f"{len(failed)} of {len(status)} jobs failed ({first[0]}: {first[1]}); "
                         "re-run the same command to retry them")


def _seed_dir(out: Path, seed: int) -> Path:
    return out / f"seed-{seed}"


def _check_seeds(seeds: Iterable[Any]) -> list[int]:
    seeds = list(seeds)
    if not seeds:
        raise UserError("seeds must name at least one seed")
    for s in seeds:
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise UserError(f"each seed must be a non-negative integer; got {s!r}")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"seeds has a repeated value; got {seeds}")
    return seeds


def train_jobs(cfg: TrainConfig, seeds: Iterable[int], out: str | Path, prefix: str = "dense") -> list[Job]:
    """One dense training job per seed, in ``out/<prefix>-seed-<s>``."""
    out = Path(out)
    base = to_dict(TrainConfig.of(cfg))
    return [Job(f"{prefix}-seed-{s}", "train", {**base, "seed": s}, str(out / f"{prefix}-seed-{s}"))
            for s in _check_seeds(seeds)]


# ---------------------------------------------------------------------------------------------
# Lottery: seeds x variants, one shared dense run per seed.
# ---------------------------------------------------------------------------------------------


def _link_dense(shared: Path, run: Path) -> None:
    """Give the variant run ``run`` the seed's dense phase (hard links; copies where links fail)."""
    from spikeprune.engine.train import is_complete

    if not is_complete(run / "dense"):
        link_run(shared, run / "dense")


def parse_variant(spec: str) -> tuple[str, str | None]:
    """A sweep's variant: ``VARIANT`` or ``VARIANT@NORMALIZE``, e.g. ``sf-imp-1@none``.

    The ``@`` form overrides the global ranking's layer normalisation for that variant only, so one
    sweep can run SF-IMP-1 both as this library's default for mixed criteria (``budget``: magnitude
    sets each layer's count, SF ranks within layers) and literally (``none``: raw SF and magnitude
    scores ranked together, LTH-SNN Algorithm 1 as written). The spec is also the run directory's name."""
    from spikeprune.tickets.lottery import VARIANTS
    from spikeprune.tickets.strategies import NORMALIZATIONS

    name, sep, norm = str(spec).partition("@")
    if name not in VARIANTS:
        raise UserError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)} (optionally @normalize, "
                        f"e.g. sf-imp-1@none)")
    if sep and norm not in NORMALIZATIONS:
        raise UserError(f"unknown normalisation {norm!r} in variant {spec!r}; choose from {', '.join(NORMALIZATIONS)}")
    return name, (norm if sep else None)


def lottery_sweep(cfg: Any, out: str | Path, *, seeds: Iterable[int] | None = None,
                  variants: Iterable[str] | None = None, jobs: int = 1, threads: int = 1,
                  log: Callable[[str], None] | None = log) -> RunResult:
    """IMP / SF-IMP-1 / SF-IMP-2 over ``seeds`` x ``variants`` (defaults: ``cfg.seed``, ``cfg.variant``;
    a variant may carry its own normalisation, ``sf-imp-1@none``: :func:`parse_variant`).

    Phase 1 trains one dense run per seed (``out/seed-<s>/dense``); phase 2 runs every (seed, variant)
    lottery in ``out/seed-<s>/<variant>`` from that shared dense phase. Then ``out/summary.json``
    (per variant: mean, std and 95 % CI over seeds at every round), ``summary.csv`` and
    ``summary.png``. Returns a :class:`RunResult`: ``metrics`` = the summary, ``rows`` = the lines of
    summary.csv (one per variant and round).
    """
    from spikeprune.tickets.lottery import LotteryConfig, collect_rows
    from spikeprune.report.plots import plot_accuracy_vs_sparsity
    from spikeprune.report.tables import format_table, interval_phrase, summarize

    if not isinstance(cfg, LotteryConfig):
        raise TypeError(f"lottery_sweep needs a LotteryConfig; got {type(cfg).__name__}")
    seeds = _check_seeds([cfg.seed] if seeds is None else seeds)
    variants = [str(v) for v in (variants or [cfg.variant])]
    parsed = {v: parse_variant(v) for v in variants}
    if len(set(variants)) != len(variants):
        raise UserError(f"variants has a repeated value; got {variants}")
    configs = {v: replace(cfg, variant=name, criterion=cfg.criterion if name == cfg.variant else None,
                          normalize=norm or cfg.normalize) for v, (name, norm) in parsed.items()}
    out = check_writable_dir(out)
    dense = [Job(f"seed-{s}/dense", "lottery-dense", to_dict(replace(configs[variants[0]], seed=s)),
                 str(_seed_dir(out, s) / "_dense")) for s in seeds]
    _raise_failures(run_jobs(dense, out, max_jobs=jobs, threads=threads, log=log))
    runs = []
    for s in seeds:
        for v in variants:
            run = _seed_dir(out, s) / v
            _link_dense(_seed_dir(out, s) / "_dense" / "dense", run)
            runs.append(Job(f"seed-{s}/{v}", "lottery", to_dict(replace(configs[v], seed=s)), str(run)))
    status = run_jobs(runs, out, max_jobs=jobs, threads=threads, log=log)

    series, per_seed = {}, {}
    for v in variants:
        found = {s: collect_rows(_seed_dir(out, s) / v)[: cfg.rounds + 1] for s in seeds}
        found = {s: rows for s, rows in found.items() if rows}
        if found:
            per_seed[v] = found
            series[v] = summarize(list(found.values()), metrics=("val_accuracy", "test_accuracy",
                                                                 "best_val_accuracy", "firing_rate"), require_all=False)
    # Issue 18: the top-level keys describe the whole sweep. "config" holds the settings every run shares;
    # those that differ between runs (seed, variant, the variant's criterion) are under "varied", in run order,
    # not one run's value (``variant: imp, seed: 0``) passed off as the sweep's.
    run_configs = [to_dict(replace(configs[v], seed=s)) for s in seeds for v in variants]
    shared = {k: x for k, x in run_configs[0].items() if all(c[k] == x for c in run_configs[1:])}
    varied = {k: list(dict.fromkeys(c[k] for c in run_configs)) for k in run_configs[0] if k not in shared}
    summary = {"kind": "lottery", "seeds": seeds, "variants": variants,
               "criteria": {v: configs[v].pruning_criterion for v in variants}, "status": status,
               "complete": all(not s.startswith("failed") for s in status.values()),
               "config": shared, "varied": varied, "series": series,
               "per_seed": {v: {str(s): r for s, r in found.items()} for v, found in per_seed.items()}}
    write_json(out / "summary.json", summary)
    fields = ["variant", "round", "sparsity", "density", "n", "test_accuracy", "test_accuracy_std",
              "test_accuracy_ci", "val_accuracy", "best_val_accuracy", "firing_rate"]
    lines = [{"variant": v, **p} for v, points in series.items() for p in points]
    write_csv(out / "summary.csv", lines, fields)
    if series:
        first = next(iter(series.values()))
        plot_accuracy_vs_sparsity(series, out / "summary.png", reference=first[0]["test_accuracy"],
                                  reference_label="dense (round 0)",
                                  title=f"{cfg.model} on {cfg.dataset}: lottery tickets, {interval_phrase(len(seeds))}")
        summary["table"] = format_table(series)
    _raise_failures(status)
    return RunResult(out, summary, lines)


# ---------------------------------------------------------------------------------------------
# Edge-popup: seeds x densities.
# ---------------------------------------------------------------------------------------------


def edgepopup_sweep(cfg: Any, out: str | Path, *, seeds: Iterable[int] | None = None,
                    reference: Iterable[str | Path] = (), jobs: int = 1, threads: int = 1,
                    log: Callable[[str], None] | None = log) -> RunResult:
    """One edge-popup search per (seed, density): ``out/seed-<s>/density-<d>`` (``out/density-<d>`` when
    ``seeds`` is None), each seed's ``results.*`` in its folder and every point in ``out/results.*``.
    ``reference``: dense trained runs (their folders or metrics.json), the dashed line of the plots.
    Returns a :class:`RunResult`: ``metrics`` = ``out/results.json``'s summary, ``rows`` = its points."""
    from spikeprune.tickets.edgepopup import (
        RESULT_FILE,
        EdgePopupConfig,
        check_density,
        read_reference,
        run_dir_name,
        write_results,
    )

    if not isinstance(cfg, EdgePopupConfig):
        raise TypeError(f"edgepopup_sweep needs an EdgePopupConfig; got {type(cfg).__name__}")
    per_seed_dirs = seeds is not None
    seeds = _check_seeds([cfg.seed] if seeds is None else seeds)
    densities = list(cfg.densities) or [cfg.density]
    for d in densities:
        check_density(d, "each of densities")
    ref = read_reference(reference, like=cfg)
    out = check_writable_dir(out)
    where = {s: (_seed_dir(out, s) if per_seed_dirs else out) for s in seeds}
    grid = [Job(f"seed-{s}/density-{d:g}", "edgepopup", to_dict(replace(cfg, seed=s, density=d, densities=())),
                str(where[s] / run_dir_name(d))) for s in seeds for d in densities]
    status = run_jobs(grid, out, max_jobs=jobs, threads=threads, log=log)
    rows: dict[int, list[dict[str, Any]]] = {}
    for job in grid:
        if job.done():
            rows.setdefault(int(job.config["seed"]), []).append(read_json(Path(job.out) / RESULT_FILE))
    complete = all(not s.startswith("failed") for s in status.values())
    if per_seed_dirs:
        for s, r in rows.items():
            write_results(where[s], r, cfg=replace(cfg, seed=s), reference=ref,
                          complete=len(r) == len(densities))
    everything = [r for s in seeds for r in rows.get(s, [])]
    summary = write_results(out, everything, cfg=cfg, reference=ref, complete=complete and
                            len(everything) == len(grid))
    summary["status"] = status
    summary["seeds"] = seeds
    _raise_failures(status)
    return RunResult(out, summary, summary["rows"])
