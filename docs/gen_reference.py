"""Write docs/reference.md from the docstrings of ``spikeprune.__all__`` (run from the repository root).

    python docs/gen_reference.py            # rewrites docs/reference.md
    python docs/gen_reference.py --check    # exit 1 if docs/reference.md is out of date (CI)

Names are grouped by the module that defines them, in the order of ``__all__``; each entry gives the
signature and the full docstring; a configuration dataclass also lists its fields with their defaults
and help texts (the same text as the CLI flags).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
from pathlib import Path

import spikeprune

OUT = Path(__file__).resolve().parent / "reference.md"

#: every CLI command and the Python call that does the same, writing the same files (tests/test_python_api.py
#: runs both and compares the files; a renamed function fails ``resolve`` here, so the table cannot drift).
PYTHON_EQUIVALENTS: list[tuple[str, tuple[str, ...], str]] = [
    ("train", ("spikeprune.fit",), "`fit(TrainConfig(...), out)` -> RunResult (metrics.json, history.csv rows); "
     "`model=` trains any network, e.g. an adapted SpikingJelly one"),
    ("evaluate", ("spikeprune.deploy.evaluate.evaluate_checkpoint", "spikeprune.evaluate"),
     "`evaluate_checkpoint(EvaluateConfig(checkpoint=...), out)` -> RunResult (metrics.json); on a model in "
     "memory `evaluate(model, loader)` returns the same keys (`test_accuracy`, `test_loss`, `firing_rate`, "
     "`firing_rates`)"),
    ("lottery", ("spikeprune.run_lottery",), "`run_lottery(LotteryConfig(...), out)` -> RunResult (results.json, "
     "rounds.csv rows)"),
    ("lottery --seeds/--variants/--jobs", ("spikeprune.lottery_sweep",), "-> RunResult (summary.json)"),
    ("edgepopup", ("spikeprune.tickets.edgepopup.search_densities", "spikeprune.tickets.edgepopup.search"),
     "`search_densities(EdgePopupConfig(...), out)` -> RunResult (results.json; one density: `search`, "
     "result.json)"),
    ("edgepopup --seeds/--jobs", ("spikeprune.edgepopup_sweep",), "-> RunResult (results.json)"),
    ("compress", ("spikeprune.compress",), "`compress(CompressConfig(checkpoint=..., <the checkpoint's model "
     "settings>), out)` -> RunResult (metrics.json); `compression.compress.recorded_training(checkpoint)` gives "
     "the settings the CLI reads from the checkpoint"),
    ("cost", ("spikeprune.compression.compress.cost_of_checkpoint", "spikeprune.cost_report"),
     "`cost_of_checkpoint(checkpoint, out=...)` -> CostReport (cost.json; `.table()` is what the CLI prints)"),
    ("analyze flips", ("spikeprune.studies.flips.analyze_flips",), "`analyze_flips(FlipsConfig(...), out)` -> "
     "RunResult (flips.json; rows = its rows)"),
    ("analyze validity", ("spikeprune.studies.validity.analyze_validity",),
     "`analyze_validity(ValidityConfig(...), out)` -> RunResult (validity.json; rows = its rows)"),
    ("theory slth", ("spikeprune.theory.config.SlthConfig.experiment",),
     "`SlthConfig(...).experiment()` -> the dict the CLI writes to slth.json (no files written)"),
    ("theory width", ("spikeprune.theory.slth.width_bound",), "the bound per form, as the CLI prints it"),
    ("interop", ("spikeprune.interop.pipeline.analyse_third_party",),
     "`analyse_third_party(factory, out, ...)` -> RunResult (metrics.json; rows = its history)"),
    ("export", ("spikeprune.interop.nir_export.export_checkpoint", "spikeprune.to_nir"),
     "`export_checkpoint(checkpoint, out, format='nir')` -> summary dict (the file is the result)"),
    ("reproduce", ("spikeprune.reproduce",), "-> RunResult (report.json)"),
    ("quickstart", ("spikeprune.fit", "spikeprune.run_lottery", "spikeprune.tickets.edgepopup.demo"),
     "no single call: the three steps it chains"),
]


def resolve(dotted: str) -> object:
    """The object a dotted path names (``pkg.module.attr.attr``), importing the longest module prefix."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)  # AttributeError: the table names something that does not exist
        return obj
    raise ImportError(dotted)


def _commands() -> list[str]:
    rows = ["| command | Python | returns |", "|---|---|---|"]
    for command, calls, note in PYTHON_EQUIVALENTS:
        for dotted in calls:
            resolve(dotted)
        names = ", ".join(f"`{c}`" for c in calls)
        rows.append(f"| `spikeprune {command}` | {names} | {note.replace('|', '/')} |")
    return rows


def _signature(obj: object) -> str:
    """The signature, with function/class defaults shown by name (``log``), never as ``<function log at 0x..>``:
    a memory address would make the file differ on every run (and --check always fail)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = []
    for p in sig.parameters.values():
        d = p.default
        if d is not p.empty and (inspect.isfunction(d) or inspect.isclass(d) or inspect.isbuiltin(d)):
            p = p.replace(default=_Named(d.__qualname__))
        params.append(p)
    text = str(sig.replace(parameters=params))
    if re.search(r" at 0x[0-9a-f]+", text):
        raise SystemExit(f"{getattr(obj, '__qualname__', obj)}: a default renders with a memory address: {text}")
    return text


class _Named:
    """A default value printed as a bare name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def _doc(obj: object) -> str:
    return inspect.cleandoc(inspect.getdoc(obj) or "(no docstring)")


def _fields(cls: type) -> list[str]:
    rows = ["| field | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        text = f.metadata.get("help", "").replace("|", "\\|")
        rows.append(f"| `{f.name}` | `{default!r}` | {text} |")
    return rows


def _entry(name: str, obj: object) -> list[str]:
    kind = "class" if inspect.isclass(obj) else "function" if callable(obj) else "object"
    # docstrings are Google style with indented Args: blocks: shown verbatim, as the source has them
    lines = [f"### `{name}`", "", f"```python\n{kind} {name}{_signature(obj) if callable(obj) else ''}\n```", "",
             "```text", _doc(obj), "```", ""]
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and any(f.metadata.get("help") for f in dataclasses.fields(obj)):
        lines += ["Fields (CLI flags `--field-name`, YAML keys `field_name`):", "", *_fields(obj), ""]
    elif inspect.isclass(obj):
        for mname, member in inspect.getmembers(obj):
            if mname.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
                continue
            if getattr(member, "__qualname__", "").split(".")[0] not in (obj.__name__, ""):
                continue  # inherited from a base class outside this one
            doc = member.__doc__  # not inspect.getdoc: nn.Module's inherited docstrings say nothing here
            if doc:
                doc = inspect.cleandoc(doc)
                sig = "" if isinstance(member, property) else _signature(member)
                lines += [f"* `{mname}{sig}`: {doc.splitlines()[0]}"]
        lines.append("")
    return lines


def render() -> str:
    groups: dict[str, list[tuple[str, object]]] = {}
    for name in spikeprune.__all__:
        obj = getattr(spikeprune, name)
        groups.setdefault(getattr(obj, "__module__", "spikeprune"), []).append((name, obj))
    out = ["# API reference", "",
           f"Generated by `python docs/gen_reference.py` from the docstrings of `spikeprune.__all__` "
           f"(spikeprune {spikeprune.__version__}). Every name below is importable as `from spikeprune import "
           "<name>`; the modules hold more (see each module's docstring). Tensors are time-major `[T, B, ...]`.",
           "", "## The rules of the API", "",
           # the package docstring is the one statement of the rules (help(spikeprune) shows the same)
           inspect.cleandoc(spikeprune.__doc__).split("\n\n", 1)[1].replace("``", "`").replace(":class:", ""),
           "", "## Each command in Python", "",
           "The call that does what each CLI command does and writes the same files (tests/test_python_api.py "
           "checks this command by command). Names under `spikeprune.` alone are importable from the package root.",
           "", *_commands(),
           "", "Modules: " + ", ".join(f"[`{m}`](#{m.replace('.', '')})" for m in groups), ""]
    for module, items in groups.items():
        mod = sys.modules[module]
        intro = inspect.cleandoc(mod.__doc__ or "").split("\n\n")[0]
        out += [f"## `{module}`", "", intro, ""]
        for name, obj in items:
            out += _entry(name, obj)
    out += ["## Command equivalents outside the package root", "",
            "The calls of the command table above that are not in `spikeprune.__all__` (import them from their module).", ""]
    seen = set(spikeprune.__all__)
    for _, calls, _ in PYTHON_EQUIVALENTS:
        for dotted in calls:
            if dotted.split(".", 1)[1] not in seen:
                seen.add(dotted.split(".", 1)[1])
                out += _entry(dotted, resolve(dotted))
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        if not (OUT.exists() and OUT.read_text() == text):
            print(f"{OUT} is out of date: run python docs/gen_reference.py", file=sys.stderr)
            sys.exit(1)
        sys.exit(0)
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text.splitlines())} lines)")
