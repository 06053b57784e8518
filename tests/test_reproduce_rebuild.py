"""The recorded study reports rebuild from their result files identically (`reproduce --from-results`).

Runs the rebuild commands of benchmarks/reports/README.md, as written there, from a scratch directory laid
out like the repository (the results linked in, the report written fresh), and compares report.md,
report.json and configs/ byte for byte with the committed report. The PNGs are compared by name only:
their bytes depend on matplotlib's version. fig3_cpu and fig5_cpu are not here: the run folders they were
built from no longer exist (benchmarks/reports/README.md says so).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import spikeprune

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "benchmarks" / "reports" / "README.md"


def _command(study: str) -> list[str]:
    lines = [l for l in README.read_text().splitlines() if l.startswith(f"spikeprune reproduce {study} ")]
    assert len(lines) == 1, f"benchmarks/reports/README.md must give one rebuild command for {study}"
    return shlex.split(lines[0])


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


@pytest.mark.slow
@pytest.mark.parametrize("study", ["theory", "qpsnn"])
def test_recorded_report_rebuilds_identically(tmp_path, study):
    argv = _command(study)
    results, out = argv[argv.index("--from-results") + 1], argv[argv.index("--out") + 1]
    (tmp_path / results).parent.mkdir(parents=True)
    (tmp_path / results).symlink_to(ROOT / results, target_is_directory=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(spikeprune.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    committed, rebuilt = ROOT / out, tmp_path / out
    old, new = _files(committed), _files(rebuilt)
    assert sorted(old) == sorted(new), "the rebuilt report has other files than the committed one"
    for name in old:
        if name.endswith(".png"):
            continue
        assert new[name] == old[name], f"{out}/{name} differs from the committed file"
    assert {n for n in old if n.startswith("configs/")} and "report.md" in old and "report.json" in old


@pytest.mark.parametrize("study", ["fig3", "fig5", "theory", "qpsnn"])
def test_report_commands_parse_back_to_the_configs_the_study_runs(tmp_path, study):
    # Every per-step command of a report, given to the real `spikeprune` parser (with the YAML files the
    # report writes next to it), builds exactly the config `reproduce` runs for that step.
    from spikeprune.cli import build_parser
    from spikeprune.cli.args import config_from_args
    from spikeprune.studies.protocols import SCALES, protocol
    from spikeprune.studies.reproduce import STEPS, _write_configs, command_line

    for scale in SCALES:
        p = protocol(study, scale)
        out = tmp_path / scale
        _write_configs(study, p, out)
        steps = STEPS[study](p, out / "runs")
        assert steps
        for step in steps:
            line = command_line(step, out / "configs")
            argv = [a if a != "N" else "2" for a in shlex.split(line)]  # `--jobs N`: the reader picks N
            assert argv[0] == "spikeprune"
            args = build_parser().parse_args(argv[1:])
            assert config_from_args(type(step.cfg), args) == step.cfg, line
            assert args.out == str(step.out)


@pytest.mark.slow
def test_the_reports_slth_command_writes_where_the_report_reads(tmp_path):
    # `spikeprune theory slth ... --out ROOT/slth/<setting>` (the report's command) writes slth.json in that
    # folder; the theory report finds it there as well as in the runner's ROOT/slth/<setting>.json.
    from spikeprune.cli import main
    from spikeprune.studies.protocols import protocol
    from spikeprune.studies.reproduce import _theory_collect

    out = tmp_path / "slth" / "N4_L1_T1_eps0.1"
    assert main(["theory", "slth", "--N", "4", "--eps", "0.1", "--k", "4,8", "--trials", "2", "--equality-trials", "1",
                 "--samples", "8", "--out", str(out)]) == 0
    data = _theory_collect(protocol("theory", "smoke"), tmp_path)
    assert list(data["slth"]) == ["N4_L1_T1_eps0.1"] and data["slth"]["N4_L1_T1_eps0.1"]["config"]["N"] == 4
