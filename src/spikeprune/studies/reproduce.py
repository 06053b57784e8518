"""One-command reproduction: run a study (:mod:`spikeprune.studies.protocols`) and write a self-contained report.

    spikeprune reproduce fig5 --scale smoke --out runs/repro_fig5            # runs, then reports
    spikeprune reproduce fig5 --scale cpu --from-results runs/lottery_study --out benchmarks/reports/fig5_cpu

``out`` receives ``report.md`` (the commands, the protocol, the paper's claims next to our numbers,
tables, plots), the PNGs it shows, ``report.json`` (every number of the report) and
``configs/<panel>.yaml`` (the exact settings, loadable with ``--config``). The runs go to
``out/runs/`` unless ``from_results`` names existing run directories, which are then only read.
Everything is resumable: re-running the same command continues the runs where they stopped and
rebuilds the report from whatever has finished (the report says what is missing).

This module is the study runner (orchestration): each study is a list of :class:`Step` (a command's
config and run folder), which the runner runs and the report shows as commands rendered from the same
configs (:func:`spikeprune.core.config.to_argv`); the collectors read the result files into plain data.
The markdown, tables and plots of the report are :mod:`spikeprune.report.reproduction` (presentation).

Where the runs of each study live (``root`` = ``out/runs`` or ``from_results``):

* fig5: ``root/<panel>/seed-<s>/<variant>/`` (a lottery run each; :func:`~spikeprune.studies.sweep.lottery_sweep`).
  ``from_results`` may also be a ``benchmarks/lottery/study.py`` root (``seed<s>/<variant>/``); every
  variant found there is reported (e.g. ``random``).
* fig3: ``root/<panel>/seed-<s>/density-<d>/result.json`` and the dense references
  ``root/<panel>/dense-seed-<s>/metrics.json``; any ``density-*/result.json`` below ``root`` and any
  ``dense*/metrics.json`` directly in it count (the edge-popup study's layout), plus ``references``.
* theory: ``root/dense/`` (the analysed network), ``root/flips/<perturbation>/flips.json`` and
  ``root/slth/<setting>.json`` (the layout of ``benchmarks/theory/results``).
* qpsnn: ``root/dense/`` and ``root/<cell>/metrics.json`` (``compress`` runs), or the flat cell files
  ``root/*.json`` of ``benchmarks/qpsnn/study.py``.
"""

from __future__ import annotations

import datetime
import platform
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from spikeprune.core.diagnostics import UserError
from spikeprune.core.config import fields_of, to_argv
from spikeprune.engine.config import TrainConfig
from spikeprune.core.io import check_writable_dir, read_json, write_json, write_text
from spikeprune.report.reproduction import REF_KEYS, SECTIONS, page, slug
from spikeprune.studies.protocols import CLAIMS, Protocol, protocol
from spikeprune.core.rundir import RunResult, log, phase_done

__all__ = ["reproduce", "write_report"]

Log = Callable[[str], None] | None


@dataclass
class Step:
    """One command of a study: ``command`` (e.g. ``spikeprune lottery``) run with the config ``cfg`` into
    ``out``. ``config``: the name of the YAML file next to the report holding ``preset`` (the command names
    it with ``--config``; only what ``cfg`` changes from it is written as flags); ``extra``: the flags that
    are not config fields (``--seeds``, ``--reference``, ...; not ``--jobs``, which changes no result: the
    report says so in words). The runner runs ``cfg``; the report shows :func:`command_line` of the same
    step, so the two cannot differ."""

    command: str
    cfg: Any
    out: Path
    config: str | None = None
    preset: dict[str, Any] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)


def command_line(step: Step, configs: Path) -> str:
    """The shell command of ``step`` (``configs``: the folder of the report's YAML files)."""
    argv = [*step.command.split(), *(["--config", str(configs / step.config)] if step.config else []),
            *to_argv(step.cfg, base=step.preset if step.config else None), *step.extra, "--out", str(step.out)]
    return " ".join(shlex.quote(a) for a in argv)


def _data_dir(steps: list[Step], data_dir: str | None) -> list[Step]:
    """``steps`` reading the dataset from ``data_dir`` (where, not what: not part of a run's identity)."""
    if not data_dir:
        return steps
    return [replace(s, cfg=replace(s.cfg, data_dir=data_dir)) if "data_dir" in {f.name for f in fields(s.cfg)}
            else s for s in steps]

def _yaml(values: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}, sort_keys=False)


# ---------------------------------------------------------------------------------------------
# fig5: lottery tickets.
# ---------------------------------------------------------------------------------------------


def _fig5_steps(p: Protocol, root: Path) -> list[Step]:
    from spikeprune.tickets.lottery import LotteryConfig

    return [Step("spikeprune lottery", LotteryConfig(**values), root / slug(name), f"{slug(name)}.yaml", values,
                 ["--seeds", ",".join(map(str, p.seeds)), "--variants", ",".join(p.options["variants"])])
            for name, values in p.panels.items()]


def _fig5_run(p: Protocol, root: Path, out: Path, jobs: int, threads: int, data_dir: str | None, log: Log) -> None:
    from spikeprune.studies.sweep import lottery_sweep

    for step in _data_dir(_fig5_steps(p, root), data_dir):
        lottery_sweep(step.cfg, step.out, seeds=p.seeds, variants=p.options["variants"], jobs=jobs,
                      threads=threads, log=log)


def _lottery_runs(panel_root: Path) -> dict[str, dict[int, Path]]:
    """``{variant: {seed: run dir}}`` under a sweep (seed-<s>/<v>) or study (seed<s>/<v>) root."""
    found: dict[str, dict[int, Path]] = {}
    for seed_dir in sorted(panel_root.glob("seed*")):
        m = re.fullmatch(r"seed-?(\d+)", seed_dir.name)
        if not m or not seed_dir.is_dir():
            continue
        for run in sorted(seed_dir.iterdir()):
            if run.is_dir() and not run.name.startswith("_") and (run / "dense" / "metrics.json").exists():
                found.setdefault(run.name, {})[int(m.group(1))] = run
    return found


def _panel_root(root: Path, name: str, single: bool) -> Path:
    return root / slug(name) if (root / slug(name)).is_dir() or not single else root


def _fig5_collect(p: Protocol, root: Path) -> dict[str, Any]:
    from spikeprune.tickets.lottery import collect_rows
    from spikeprune.report.tables import summarize

    panels = {}
    for name, values in p.panels.items():
        runs = _lottery_runs(_panel_root(root, name, len(p.panels) == 1))
        series, per_seed = {}, {}
        for variant, by_seed in runs.items():
            rows = {s: collect_rows(d)[: int(values.get("rounds", 10**6)) + 1] for s, d in by_seed.items()}
            rows = {s: r for s, r in rows.items() if r}
            if rows:
                per_seed[variant] = rows
                series[variant] = summarize(list(rows.values()), metrics=("test_accuracy", "firing_rate"),
                                            require_all=False)
        expected = int(values.get("rounds", 0)) + 1
        complete = bool(series) and all(len(s) >= expected and min(pt["n"] for pt in s) >= len(p.seeds)
                                        for v, s in series.items() if v in p.options["variants"]) \
            and all(v in series for v in p.options["variants"])
        panels[name] = {"series": series, "complete": complete,
                        "seeds_found": {v: sorted(r) for v, r in per_seed.items()}}
    return {"panels": panels}


# ---------------------------------------------------------------------------------------------
# fig3: edge-popup.
# ---------------------------------------------------------------------------------------------


def _fig3_steps(p: Protocol, root: Path) -> list[Step]:
    """Per panel: the dense references (one training run per seed), then one edge-popup sweep per reading
    of the paper's setup (``p.options["readings"]``: name -> EdgePopupConfig overrides; the first reading's
    searches go to the panel's folder, every other reading's to a subfolder named after it). Every reading
    of a panel is compared with the same dense references."""
    from spikeprune.tickets.edgepopup import EdgePopupConfig
    from spikeprune.studies.sweep import train_jobs

    steps = []
    readings = p.options.get("readings") or {"": {}}
    for name, values in p.panels.items():
        where = root / slug(name)
        dense_values = values if p.options["dense"] == "preset" else p.options["dense"]
        dense = [Step("spikeprune train", TrainConfig(**job.config), Path(job.out), f"{slug(name)}-dense.yaml",
                      fields_of(TrainConfig, dense_values)) for job in train_jobs(TrainConfig.of(dense_values), p.seeds, where)]
        refs = [a for d in dense for a in ("--reference", str(d.out))]
        steps += dense
        for i, (reading, overrides) in enumerate(readings.items()):
            searched = {**values, **overrides}
            out, stem = (where, slug(name)) if i == 0 else (where / slug(reading), f"{slug(name)}-{slug(reading)}")
            steps.append(Step("spikeprune edgepopup", EdgePopupConfig(**fields_of(EdgePopupConfig, searched)), out,
                              f"{stem}.yaml", searched, ["--seeds", ",".join(map(str, p.seeds)), *refs]))
    return steps


def _fig3_run(p: Protocol, root: Path, out: Path, jobs: int, threads: int, data_dir: str | None, log: Log) -> None:
    from spikeprune.core.config import to_dict
    from spikeprune.studies.sweep import Job, edgepopup_sweep, run_jobs

    dense: list[Step] = []
    searched = False  # a train step after a search starts the next panel's references
    for step in _data_dir(_fig3_steps(p, root), data_dir):
        if step.command == "spikeprune train":
            dense = [] if searched else dense
            dense.append(step)
            searched = False
            continue
        searched = True
        dense_jobs = [Job(d.out.name, "train", to_dict(d.cfg), str(d.out)) for d in dense]  # as train_jobs made them
        status = run_jobs(dense_jobs, dense[0].out.parent, max_jobs=jobs, threads=threads, log=log)
        if any(s.startswith("failed") for s in status.values()):
            raise UserError(f"dense reference training failed: {status}")
        edgepopup_sweep(step.cfg, step.out, seeds=p.seeds, reference=[j.out for j in dense_jobs], jobs=jobs,
                        threads=threads, log=log)


def _read_references(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Dense trained runs: ``{"path", "test_accuracy", "settings"}`` (settings: the keys that matter
    for matching a reference to a series of searches)."""
    from spikeprune.tickets.edgepopup import read_reference

    refs = []
    for p in paths:
        f = Path(p) / "metrics.json" if Path(p).is_dir() else Path(p)
        acc = read_reference([f])[0]
        config = read_json(f).get("config", {})
        refs.append({"path": str(f.parent), "test_accuracy": acc,
                     "settings": {k: config.get(k) for k in REF_KEYS}})
    return refs


def _fig3_collect(p: Protocol, root: Path, references: Iterable[str | Path] = ()) -> dict[str, Any]:
    panels = {}
    for name, values in p.panels.items():
        panel_root = _panel_root(root, name, len(p.panels) == 1)
        rows = [read_json(f) for f in sorted(panel_root.rglob("density-*/result.json"))]
        refs = [d for d in sorted(panel_root.glob("dense*")) if (d / "metrics.json").exists()]
        ref_values = _read_references([*refs, *references])
        widths = sorted({r.get("width", 1.0) for r in rows})
        grid = list(values.get("densities", ()))
        main = [r for r in rows if r.get("width") == values.get("width", 1.0)] or rows
        done = {(r["seed"], round(r["density"], 6)) for r in main}
        complete = all((s, round(d, 6)) in done for s in p.seeds for d in grid) and len(ref_values) >= len(p.seeds)
        panels[name] = {"rows": rows, "references": ref_values, "widths": widths, "complete": complete}
    return {"panels": panels}


# ---------------------------------------------------------------------------------------------
# theory: flips and the SLTH construction.
# ---------------------------------------------------------------------------------------------


def _slth_name(s: dict[str, Any]) -> str:
    return f"N{s['N']}_L{s['L']}_T{s['T']}_eps{s['eps']:g}"


def _theory_steps(p: Protocol, root: Path) -> list[Step]:
    """The dense network, one flip analysis per perturbation (``analyze flips``), one SLTH setting each."""
    from spikeprune.theory.config import FlipsConfig, SlthConfig
    from spikeprune.theory.perturb import parse_perturbation

    train = TrainConfig.of(p.panels["flips"])
    ckpt = str(root / "dense" / "checkpoint.safetensors")
    # the training fields only: the paper scale's network is a lottery preset, whose other keys
    # `spikeprune train --config` would refuse
    return [Step("spikeprune train", train, root / "dense", "flips.yaml", fields_of(TrainConfig, p.panels["flips"])),
            *(Step("spikeprune analyze flips", FlipsConfig(checkpoint=ckpt, perturb=(spec,), samples=p.options["samples"],
                                                           p_sup=p.options["p_sup"], seed=train.seed,
                                                           **({"batch_size": p.options["batch_size"]}
                                                              if "batch_size" in p.options else {})),
                   root / "flips" / parse_perturbation(spec).label) for spec in p.options["perturbations"]),
            *(Step("spikeprune theory slth", SlthConfig(**s), root / "slth" / _slth_name(s)) for s in p.options["slth"])]


def _theory_run(p: Protocol, root: Path, out: Path, jobs: int, threads: int, data_dir: str | None, log: Log) -> None:
    from spikeprune.studies.flips import analyze_flips, is_complete
    from spikeprune.theory.perturb import parse_perturbation
    from spikeprune.report.plots import plot_slth
    from spikeprune.engine.train import fit

    train, *rest = _data_dir(_theory_steps(p, root), data_dir)
    flips = [s for s in rest if s.command == "spikeprune analyze flips"]
    fit(train.cfg, train.out, resume=True, progress=False, log=log)
    for step in flips:  # each step is `spikeprune analyze flips` on the dense checkpoint, run as the command runs
        if is_complete(step.out):
            continue
        if log:
            log(f"reproduce theory: flips under {parse_perturbation(step.cfg.perturb[0]).label}")
        analyze_flips(step.cfg, step.out)
    for step in rest:
        if step.command != "spikeprune theory slth" or phase_done(step.out.parent, f"{step.out.name}.json"):
            continue
        if log:
            log(f"reproduce theory: SLTH construction {step.out.name}")
        result = step.cfg.experiment()
        plot_slth(result, step.out.parent / f"{step.out.name}.png")
        write_json(step.out.parent / f"{step.out.name}.json", result)


def _theory_collect(p: Protocol, root: Path) -> dict[str, Any]:
    flips = {}
    for f in sorted((root / "flips").glob("*/flips.json")):
        data = read_json(f)
        for label in data.get("perturbations", [f.parent.name]):
            flips[label] = data
    slth = {}
    # root/slth/<setting>.json (what the runner writes), or root/slth/<setting>/slth.json: what the report's
    # `spikeprune theory slth ... --out root/slth/<setting>` command writes
    found = {f.stem: f for f in sorted((root / "slth").glob("*.json"))}
    found.update({f.parent.name: f for f in sorted((root / "slth").glob("*/slth.json")) if f.parent.name not in found})
    for stem, f in sorted(found.items()):
        data = read_json(f)
        if isinstance(data, dict) and isinstance(data.get("experiment"), dict):
            # benchmarks/theory/slth_study.py's theorem regime: the experiment at the eps where the
            # width bound is defined, with the bound's k next to it
            exp = data["experiment"]
            if "rows" in exp and "bounds" in exp:
                bounds = {**exp["bounds"], **{k: data[k] for k in ("k_paper", "k_proof") if data.get(k)}}
                data = {**exp, "bounds": bounds}
        if isinstance(data, dict) and "rows" in data and "bounds" in data:
            slth[stem] = data
    # theorem-regime settings first: they are the ones where Theorem 4.3 says something
    slth = dict(sorted(slth.items(), key=lambda kv: (not kv[1]["bounds"].get("k_proof"), kv[0])))
    dense = None
    candidates = [root / "dense"] + [Path(d["checkpoint"]).parent for d in flips.values() if d.get("checkpoint")]
    for c in candidates:
        if (c / "metrics.json").exists():
            dense = read_json(c / "metrics.json")
            break
    from spikeprune.theory.flips import MODES, FlipRow, flip_summary
    from spikeprune.theory.perturb import parse_perturbation

    wanted = {parse_perturbation(s).label for s in p.options["perturbations"]}
    complete = wanted <= set(flips) and len(slth) >= len(p.options["slth"])
    names = {f.name for f in fields(FlipRow)}
    rows = [FlipRow(**{k: v for k, v in r.items() if k in names}) for d in flips.values() for r in d["rows"]]
    checkpoints = sorted({str(d["checkpoint"]) for d in flips.values() if d.get("checkpoint")})
    return {"flips": flips, "slth": slth, "dense": dense, "checkpoints": checkpoints, "complete": complete,
            "flip_rows": rows,
            "flip_summary": flip_summary(rows), "modes": MODES}


# ---------------------------------------------------------------------------------------------
# qpsnn: compression.
# ---------------------------------------------------------------------------------------------


def _qpsnn_steps(p: Protocol, root: Path) -> list[Step]:
    """The shared dense network, then one ``compress`` run per cell."""
    from spikeprune.compression.compress import CompressConfig

    first = next(iter(p.panels.values()))
    dense_values = first if p.options["dense"] == "shared" else p.options["dense"]
    ckpt = str(root / "dense" / "checkpoint.safetensors")
    return [Step("spikeprune train", TrainConfig.of(dense_values), root / "dense", "dense.yaml",
                 fields_of(TrainConfig, dense_values)),
            *(Step("spikeprune compress", CompressConfig(**{**fields_of(CompressConfig, values), "checkpoint": ckpt}),
                   root / slug(name), f"{slug(name)}.yaml", values) for name, values in p.panels.items())]


def _qpsnn_run(p: Protocol, root: Path, out: Path, jobs: int, threads: int, data_dir: str | None, log: Log) -> None:
    from spikeprune.compression.compress import compress
    from spikeprune.engine.train import fit

    dense, *cells = _data_dir(_qpsnn_steps(p, root), data_dir)
    fit(dense.cfg, dense.out, resume=True, progress=False, log=log)
    for name, step in zip(p.panels, cells):
        if log:
            log(f"reproduce qpsnn: {name}")
        compress(step.cfg, step.out, resume=True, log=log)


def _total_utilisation(u: Any) -> dict[str, Any] | None:
    if isinstance(u, list):
        u = next((r for r in u if r.get("layer") == "total"), None)
    return u if isinstance(u, dict) else None


def _qpsnn_collect(p: Protocol, root: Path) -> dict[str, Any]:
    cells = []
    for name in p.panels:
        f = root / slug(name) / "metrics.json"
        if f.exists():
            m = read_json(f)
            cfg = m.get("config", {})
            cells.append({"cell": name, "bits": cfg.get("bits"), "scale": cfg.get("scale"),
                          "channel_sparsity": cfg.get("channel_sparsity"), **m})
    if not cells:  # benchmarks/qpsnn/study.py: one flat JSON per cell
        for f in sorted(root.glob("*.json")):
            m = read_json(f)
            if isinstance(m, dict) and "test_accuracy" in m and "bits" in m:
                cells.append({"cell": m.get("id", f.stem), "channel_sparsity": m.get("sparsity"),
                              "dense_test_accuracy": m.get("dense_accuracy"), **m})
    for c in cells:
        total = _total_utilisation(c.get("utilisation"))
        qat = _total_utilisation(c.get("qat_utilisation"))
        c["utilisation_total"] = total
        c["qat_utilisation_total"] = qat
    dense = read_json(root / "dense" / "metrics.json") if (root / "dense" / "metrics.json").exists() else None
    complete = all((root / slug(name) / "metrics.json").exists() or _flat_cell_done(values, cells)
                   for name, values in p.panels.items())
    return {"cells": cells, "dense": dense, "complete": complete}


def _flat_cell_done(values: dict[str, Any], cells: list[dict[str, Any]]) -> bool:
    """Whether benchmarks/qpsnn/study.py's flat results hold the protocol cell ``values`` (same bits, scale,
    channel sparsity, criterion, order, fine-tuning epochs; full-precision membranes)."""
    # the flat files name the channel criterion `criterion` (their own column, recorded before issue 17)
    want = {"bits": values.get("bits"), "scale": values.get("scale"), "sparsity": values.get("channel_sparsity"),
            "criterion": values.get("channel_criterion"), "order": values.get("order"),
            "ft_epochs": values.get("finetune_epochs"), "membrane_bits": values.get("membrane_bits")}
    return any(all(c.get(k) == v for k, v in want.items()) for c in cells if "id" in c)


# ---------------------------------------------------------------------------------------------
# Driver.
# ---------------------------------------------------------------------------------------------

RUNNERS = {"fig3": _fig3_run, "fig5": _fig5_run, "theory": _theory_run, "qpsnn": _qpsnn_run}


def _collect(study: str, p: Protocol, root: Path, references: Iterable[str | Path]) -> dict[str, Any]:
    if study == "fig3":
        return _fig3_collect(p, root, references)
    return {"fig5": _fig5_collect, "theory": _theory_collect, "qpsnn": _qpsnn_collect}[study](p, root)


def _machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _complete(study: str, data: dict[str, Any]) -> bool:
    if "panels" in data:
        return all(pnl["complete"] for pnl in data["panels"].values())
    return bool(data.get("complete"))


STEPS = {"fig3": _fig3_steps, "fig5": _fig5_steps, "theory": _theory_steps, "qpsnn": _qpsnn_steps}


def _equivalent_commands(study: str, p: Protocol, out: Path, root: Path) -> list[str]:
    """The commands of the runs ``reproduce`` makes, one per step, rendered from the configs it runs."""
    return [command_line(s, out / "configs") for s in STEPS[study](p, root)]


def _write_configs(study: str, p: Protocol, out: Path) -> None:
    """``out/configs/<name>.yaml``: the preset every step's ``--config`` names (loadable as it is)."""
    for name, preset in {s.config: s.preset for s in STEPS[study](p, out / "runs") if s.config}.items():
        write_text(out / "configs" / name, _yaml(preset))


def write_report(study: str, scale: str, out: str | Path, root: str | Path, *, command: str,
                 references: Iterable[str | Path] = (), project_root: str | Path | None = None,
                 ran_here: bool = False) -> Path:
    """Rebuild ``out/report.md`` (+ PNGs, ``report.json``) of ``study`` at ``scale`` from the runs in ``root``.

    ``ran_here``: the runs were just made by :func:`reproduce` on this machine, so the report is stamped
    with its date and processor; otherwise (a report rebuilt from recorded results) the stamp says so and
    names no date or machine -- those of the measurements are in the study's own records, and a rebuild
    then gives the same bytes wherever and whenever it is made (tests/test_reproduce_rebuild.py).
    """
    from spikeprune import __version__

    p = protocol(study, scale, project_root=project_root)
    out, root = check_writable_dir(out), Path(root)
    if not root.is_dir():
        raise UserError(f"no results directory at {root}")
    data = _collect(study, p, root, references)
    body, numbers = SECTIONS[study](p, data, out)
    complete = _complete(study, data)
    _write_configs(study, p, out)
    if ran_here:
        now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        stamp = f"spikeprune {__version__}, {now}, {_machine()}, Python {platform.python_version()}."
    else:
        stamp = (f"spikeprune {__version__}; rebuilt from recorded results (nothing re-run): the date and machine "
                 "of the measurements are in the records of the study that made them.")
    md = page(study, scale, p, complete=complete, stamp=stamp, command=command,
              commands=_equivalent_commands(study, p, out, root), claims=CLAIMS[study], body=body, root=root)
    write_json(out / "report.json", {"study": study, "scale": scale, "complete": complete, "command": command,
                                     "results": str(root), "protocol": {"panels": p.panels, "seeds": p.seeds,
                                                                        "notes": p.notes},
                                     "claims": CLAIMS[study], "numbers": numbers})
    write_text(out / "report.md", md)
    return out / "report.md"


def reproduce(study: str, scale: str, out: str | Path, *, from_results: str | Path | None = None, jobs: int = 1,
              threads: int = 1, data_dir: str | None = None, references: Iterable[str | Path] = (),
              command: str | None = None, project_root: str | Path | None = None, log: Log = log) -> RunResult:
    """Run ``study`` at ``scale`` into ``out/runs`` (skipped with ``from_results``), then write the report.

    Returns a :class:`RunResult`: ``out`` = the report folder (``report.md``, ``report.json``, plots,
    ``configs/``), ``metrics`` = ``report.json``. Resumable: finished runs are not repeated.
    """
    p = protocol(study, scale, project_root=project_root)
    if from_results is not None and not Path(from_results).is_dir():
        raise UserError(f"--from-results {from_results} is not a directory")
    out = check_writable_dir(out)
    root = Path(from_results) if from_results is not None else out / "runs"
    if from_results is None:
        RUNNERS[study](p, root, out, jobs, threads, data_dir, log)
    command = command or (f"spikeprune reproduce {study} --scale {scale} --out {out}"
                          + (f" --from-results {from_results}" if from_results is not None else ""))
    path = write_report(study, scale, out, root, command=command, references=references, project_root=project_root,
                        ran_here=from_results is None)
    if log:
        log(f"reproduce {study}: report {path}")
    return RunResult(out, read_json(out / "report.json"))
