"""The package layout is the architecture: one-way imports between packages, no global matplotlib state.

docs/architecture.md draws the flow; this file enforces it, so a shortcut that would tangle the
packages (a science module importing the CLI, the engine importing tickets, a plot switching the
user's backend) fails here instead of in a user's notebook.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import spikeprune

PKG = Path(spikeprune.__file__).resolve().parent

# What each package may import (besides itself). Lower layers never import higher ones.
ALLOWED = {
    "core": set(),
    "engine": {"core"},
    "topology": {"core", "engine"},
    "report": {"core"},
    "tickets": {"core", "engine", "topology", "report"},
    "compression": {"core", "engine", "topology", "tickets", "report"},
    "theory": {"core", "engine", "topology", "tickets", "compression", "report"},
    "interop": {"core", "engine", "topology", "tickets", "compression", "theory", "report"},
    "deploy": {"core", "engine", "topology", "tickets", "compression", "theory", "interop", "report"},
    "studies": {"core", "engine", "topology", "tickets", "compression", "theory", "interop", "deploy", "report"},
    "cli": {"core", "engine", "topology", "tickets", "compression", "theory", "interop", "deploy", "studies",
            "report"},
    "__main__": {"cli"},  # `python -m spikeprune` is `spikeprune`
}


def _package_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else "__init__"


def _imports(path: Path) -> set[str]:
    """Top-level spikeprune packages a module imports, anywhere in it (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for n in names:
            parts = n.split(".")
            if parts[0] == "spikeprune" and len(parts) > 1:
                out.add(parts[1])
    return out


def test_packages_import_only_the_layers_below_them():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        pkg = _package_of(path)
        if pkg == "__init__":
            continue  # the public API re-exports every layer
        assert pkg in ALLOWED, f"{path.relative_to(PKG)}: a new package must be placed in ALLOWED (and docs/architecture.md)"
        for dep in _imports(path) - {pkg, "__version__"}:
            if dep not in ALLOWED[pkg] and dep in ALLOWED:
                bad.append(f"{path.relative_to(PKG)} imports spikeprune.{dep}")
            elif dep not in ALLOWED:
                # `from spikeprune import X` of a public name: only the CLI and studies may use the API root
                if dep[0].isupper() or dep in dir(spikeprune):
                    bad.append(f"{path.relative_to(PKG)} imports {dep} through the package root")
    assert not bad, "\n".join(bad)


def test_every_layer_is_a_package():
    """Only the API root and ``python -m`` sit at the top level; every layer is a subpackage (topology too)."""
    loose = sorted(p.name for p in PKG.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert not loose, f"top-level modules {loose}: make each a package (and place it in ALLOWED)"
    layers = sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").exists())
    assert set(layers) - {"configs"} <= set(ALLOWED), layers


def test_relative_imports_are_not_used():
    """Absolute imports only: a moved module then cannot silently import a sibling of its old place."""
    rel = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
           if any(isinstance(n, ast.ImportFrom) and n.level > 0 for n in ast.walk(ast.parse(p.read_text())))]
    assert not rel, rel


_DRAW_EVERY_PLOT = r"""
import sys, types
from pathlib import Path
import matplotlib
before = matplotlib.get_backend()
import importlib, pkgutil
import spikeprune
for m in pkgutil.walk_packages(spikeprune.__path__, "spikeprune."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
assert matplotlib.get_backend() == before, ("importing spikeprune changed the backend", before, matplotlib.get_backend())
from spikeprune.report import plots
out = Path(sys.argv[1])
pts = [{"sparsity": s, "test_accuracy": a, "test_accuracy_ci": 0.01} for s, a in ((0.0, 0.9), (0.5, 0.88), (0.75, 0.8))]
plots.plot_accuracy_vs_sparsity({"imp": pts, "sf": pts}, out / "a.png", reference=0.9)
plots.plot_subnetwork_accuracy([{"sparsity": 0.5, "accuracy": 0.7}, {"sparsity": 0.9, "accuracy": 0.5}], out / "b.png",
                               reference=[0.9, 0.91], fraction_line=0.97)
Row = types.SimpleNamespace
flips = [Row(mode=m, layer=l, t=t, eps=0.1, bound=0.5, bound_refined=0.2, crisis_empirical=0.1, cond_flip_rate=0.05,
             flip_rate=0.06) for m in ("local", "end_to_end") for l in ("l1", "l2") for t in (1, 2)]
plots.plot_flips(flips, out / "c.png", "t")
summary = [{"mode": m, "layer": l, "perturbation": p, "eps": 0.1, "max_cond_flip_rate": 0.05, "max_bound": 0.5}
           for m in ("local", "end_to_end") for l in ("l1", "l2") for p in ("prune-0.5-magnitude", "quantize-4b")]
plots.plot_flip_summary(summary, out / "d.png")
rows = [{"k": k, "success_rate": 0.5, "success_exact": 0.5, "success_bound": 0.0, "output_equal_rate": 0.5,
         "all_equal_rate": 0.4, "theorem_1_minus_delta": 0.0} for k in (4, 8, 16)]
plots.plot_slth({"config": {"trials": 3, "N": 2, "L": 2, "T": 2, "eps": 0.1, "u_th": 1.0, "beta": 0.5},
                 "rows": rows, "bounds": {"delta": 0.1, "C": 1.0}}, out / "e.png")
vrows = [Row(layer="l1.weight", criterion=c, group=g, flip_rate=0.1 * g) for c in ("sf", "magnitude") for g in range(3)]
plots.plot_validity(vrows, [{"layer": "l1.weight", "criterion": c, "spearman": 1.0} for c in ("sf", "magnitude")],
                    out / "f.png")
cells = [{"cell": "b4-mean-s50", "size_bytes": 4096, "test_accuracy": 0.88, "dense_test_accuracy": 0.91, "scale": "mean",
          "utilisation_total": {"effective_utilisation": 0.5}}]
plots.plot_qpsnn(cells, out / "g.png")
assert matplotlib.get_backend() == before, ("drawing changed the backend", before, matplotlib.get_backend())
assert "matplotlib.pyplot" not in sys.modules, "a plot imported pyplot (global figure state)"
print("ok", sorted(p.name for p in out.glob("*.png")))
"""


def test_importing_and_drawing_every_plot_leaves_the_backend_alone(tmp_path):
    # A user's backend (svg here; TkAgg / inline in a notebook) must survive: no matplotlib.use, no pyplot.
    env = {**os.environ, "MPLBACKEND": "svg"}
    res = subprocess.run([sys.executable, "-c", _DRAW_EVERY_PLOT, str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split("\n")[0].startswith("ok"), res.stdout
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [f"{c}.png" for c in "abcdefg"]
    assert not list(tmp_path.glob(".*tmp*")), "a temporary file was left behind"


def test_import_spikeprune_does_not_import_matplotlib():
    code = "import sys, spikeprune, spikeprune.cli; print('matplotlib' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "False", res.stdout + res.stderr


def test_api_reference_is_generated_and_current():
    """docs/reference.md is what docs/gen_reference.py writes from the docstrings (no memory address in it)."""
    root = PKG.parents[1]
    res = subprocess.run([sys.executable, str(root / "docs" / "gen_reference.py"), "--check"], capture_output=True,
                         text=True, cwd=root, timeout=300)
    assert res.returncode == 0, res.stderr + res.stdout
    assert " at 0x" not in (root / "docs" / "reference.md").read_text()
