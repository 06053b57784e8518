"""README.md and docs/guide.md do what they say: every command and snippet in them runs, and the outputs,
numbers and file names they quote are the ones it produces (issue 18).

The blocks are read out of the markdown itself (tests/helpers/docsnippets.py), so a command added to a
document is run by this test without anyone listing it. A command is run as written unless it is listed
below: in ``NOT_RUN`` (with the reason, and where it is checked instead) or in ``SHRINK`` (the
replacements that make a paper- or Fashion-MNIST-size command tiny; the guide's own commands are tiny
already and run unchanged, except the sweep). Quoted outputs were recorded with 2 threads, as the guide
says; the runs here use 2 threads whatever the machine has. Words and integers must match exactly;
decimal numbers (accuracies, rates, energies) within ``ds.RESULT_TOLERANCE`` (10 %, relative): another CPU's
convolution and matrix kernels sum in another order, and three epochs on 360 test digits turn that into a
few samples (the guide's numbers differed in this way on three x86 machines, AVX2 and AVX-512, Intel and AMD).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from event_files import synthetic_nmnist  # noqa: E402
from helpers import docsnippets as ds  # noqa: E402

INSTALL = ".ci/run runs the install lines literally, in a fresh virtual environment, before the suite"
NOT_RUN = {
    "python3 -m venv .venv && . .venv/bin/activate": INSTALL,
    "pip install torch==2.13.0 -e .": INSTALL,
    'pip install -e ".[test,events]" && pip install --no-deps spikingjelly==2.0.0 neurobench==2.3.0': INSTALL,
    "python -m pytest -q": "the suite itself (.ci/run runs it)",
    'python -m pytest -q -m "not slow"': "a part of the suite; test_fast_subset_is_a_real_subset checks the marker",
    "pip install 'spikeprune[events]'": "an extra; test_extras_exist checks it is declared (.ci/run installs it)",
    "pip install 'spikeprune[nir]'": "an extra; test_extras_exist checks it is declared (the test extras hold nir)",
    # handled by the quickstart fixture: CI's own run of it, else a run here
    "spikeprune quickstart": "run by .ci/run as the README's first command; test_readme_quickstart reads that run",
}

_FMNIST_TINY = "--width 0.25 --train-limit 512 --test-limit 256"
_CIFAR_TINY = "--dataset synthetic:train_size=32,test_size=16 --width 0.0625 --batch-size 16"
SHRINK = {
    # README: Fashion-MNIST and CIFAR-10 sizes -> seconds (the data must be installed: .ci/run does)
    "spikeprune train --model convnet --dataset fashion_mnist --epochs 10 --out runs/fmnist":
        [("--epochs 10", f"--epochs 1 {_FMNIST_TINY}")],
    "spikeprune train --config configs/fashion_mnist_convnet.yaml --out runs/fmnist-w1.5":
        [("--out", "--epochs 1 --train-limit 256 --test-limit 256 --out")],  # width 1.5 kept: 226k params
    "spikeprune train --model resnet19 --tdbn --dataset cifar10 --timesteps 5 --lr 0.3 --epochs 300 --out runs/r19":
        [("--dataset cifar10", _CIFAR_TINY), ("--epochs 300", "--epochs 1")],
    "spikeprune lottery --dataset fashion_mnist --variant sf-imp-1 --rounds 8 --prune-fraction 0.25 --epochs 10 "
    "--rewind-epoch 1 --out runs/sf1": [("--rounds 8", "--rounds 1"), ("--epochs 10", f"--epochs 2 {_FMNIST_TINY}")],
    "spikeprune lottery --config configs/kim_resnet19_cifar10.yaml --variant sf-imp-2 --out runs/kim":
        [("--out", f"{_CIFAR_TINY} --timesteps 2 --epochs 2 --rewind-epoch 1 --rounds 1 --out")],
    "spikeprune compress --checkpoint runs/fmnist/checkpoint.safetensors --bits 4 --channel-sparsity 0.5 "
    "--channel-criterion svs --finetune-epochs 3 --out runs/qp": [("--finetune-epochs 3", "--qat-epochs 1 --finetune-epochs 1")],
    "spikeprune analyze flips --checkpoint runs/fmnist/checkpoint.safetensors --perturb prune:0.8:sf --perturb "
    "quantize:4 --perturb weight-noise:0.05 --out runs/flips": [("--out", "--samples 64 --out")],
    "spikeprune theory slth --N 8 --L 2 --T 4 --eps 0.1 --out runs/slth":
        [("--out", "--trials 3 --equality-trials 1 --samples 16 --out")],
    # guide: the event commands on N-MNIST-format files written into ~/data (no event dataset downloads here)
    "spikeprune train --dataset nmnist --encoding events --data-dir ~/data --timesteps 4 --epochs 10 --out runs/nmnist":
        [("--epochs 10", "--epochs 1")],
    "spikeprune lottery --dataset nmnist --encoding events --data-dir ~/data --timesteps 4 --rounds 4 "
    "--out runs/nmnist-lth": [("--rounds 4", "--rounds 1 --epochs 2 --rewind-epoch 1")],
    "spikeprune train --dataset nmnist:time_bins=8,binning=count,denoise_us=5000 --encoding events --timesteps 8 ...":
        [("...", "--data-dir ~/data --epochs 1 --out runs/nmnist-count")],
    # the guide's sweep quotes no output; one round instead of two halves its 60 s
    "spikeprune lottery --dataset digits --width 0.5 --timesteps 2 --epochs 3 --rewind-epoch 1 --rounds 2 --seeds 0,1 "
    "--variants imp,sf-imp-1,sf-imp-2 --jobs 2 --out runs/guide/sweep": [("--rounds 2", "--rounds 1")],
}
# quoted numbers that are timings, not results; and the guide's `compress` accuracy: one epoch of fine-tuning
# after 4-bit quantization and halving the channels turns another CPU's summation order into up to 12
# points (0.55 / 0.62 / 0.67 on three x86 machines), beyond RESULT_TOLERANCE; the guide says so.
VOLATILE = (r"\b\d+(\.\d+)?x faster", r"(?<=^compressed: accuracy )0\.\d+")
# names the guide quotes that are inputs or appear only after a kill, not outputs of its commands
NOT_OUTPUT = {
    ".NAME.XXXXXXXX.spikeprune.tmp": "left only by a killed write (tests/test_run_safety.py kills one)",
    "<class>/*.aedat4": "CIFAR10-DVS's input layout (tests/test_events.py writes one)",
    "ibmGestureTrain/user*_*/<label>.npy": "DVS Gesture's input layout (tests/test_events.py writes one)",
    "Test/<digit>/*.bin": "N-MNIST's input layout (written into ~/data here)",
    "Train/<digit>/*.bin": "N-MNIST's input layout (written into ~/data here)",
    "DIR/<name>/": "a --data-dir layout", "DIR/CIFAR10DVS/": "a --data-dir layout",
    "DIR/DVSGesture/": "a --data-dir layout", "DIR/NMNIST/": "a --data-dir layout",
    "benchmarks/": "in the repository", "benchmarks/reports/": "in the repository", "configs/": "in the repository",
    "save_to/NMNIST/": "tonic's download layout",
    "~/.cache/spikeprune/<name>/": "the cache without --data-dir; the guide's event commands all pass one",
}


def _commands(doc: str) -> list[tuple[ds.Block, str]]:
    return [(b, c) for b in ds.parse(doc) if b.lang == "bash" for c in b.commands]


def _shrunk(command: str) -> str:
    for old, new in SHRINK.get(command, []):
        assert old in command, f"SHRINK for {command!r}: {old!r} is not in it"
        command = command.replace(old, new, 1)
    return command


# --- fast: the lists above match the documents, and what needs no run -----------------------------------------

def test_every_listed_command_is_in_a_document():
    """A command renamed in a document must be renamed here too, or its shrink silently stops applying."""
    present = {c for doc in ds.DOCS for _, c in _commands(doc)}
    assert not set(NOT_RUN) - present, set(NOT_RUN) - present
    assert not set(SHRINK) - present, set(SHRINK) - present
    for command in SHRINK:
        _shrunk(command)


def test_every_command_is_run_or_says_why_not():
    for doc in ds.DOCS:
        for block, command in _commands(doc):
            runnable = re.match(r"(\w+=\S+ )*(spikeprune|python|torchrun)\b", command)
            assert runnable or command in NOT_RUN, (
                f"{doc}:{block.line}: {command!r} is neither a spikeprune/python command nor in NOT_RUN")


def test_output_comparison_catches_a_changed_digit_or_order():
    """The comparison the slow tests rely on can fail: one digit, a line out of order, a missing line."""
    printed = "epoch 1/3 loss 1.98\n| 0.0 % |  90.83 |\ncompressed: 26.9x smaller, 1.34x faster\n"
    assert ds.compare("| 0.0 % | 90.83 |\n...\ncompressed: 26.9x smaller, 1.34x faster", printed) == []
    assert ds.compare("| 0.0 % | 90.84 |", printed) == ["| 0.0 % | 90.84 |"]
    assert ds.compare("| 0.0 % | 90.83 |\nepoch 1/3 loss 1.98", printed) == ["epoch 1/3 loss 1.98"]
    assert ds.compare("compressed: 26.9x smaller, 9.99x faster", printed, VOLATILE) == []  # a timing
    assert ds.compare("compressed: 27.0x smaller, 1.34x faster", printed, VOLATILE)          # not a timing
    assert ds.script_expectations('x = 1\nprint(f"{x:.3f}")   # 1.000\nprint(x)\n') == ["1.000"]


def test_result_tolerance_allows_another_cpus_digits_and_nothing_else():
    """Training results quoted by the documents are compared within ds.RESULT_TOLERANCE (another CPU's
    kernels sum in another order); words, integers and the number of numbers must still match."""
    rel = ds.RESULT_TOLERANCE
    printed = "| 25.0 % | 91.94 |\nfeatures.2.conv 4 1152 1.000 580 1.84e+04 0.481 0 1.77e+04\n"
    assert ds.compare("| 25.0 % | 91.39 |\nfeatures.2.conv 4 1152 1.000 580 1.84e+04 0.470 0 1.73e+04",
                      printed, rel=rel) == []
    assert ds.compare("| 25.0 % | 91.39 |", printed) == ["| 25.0 % | 91.39 |"]  # exact without rel
    assert ds.compare("| 25.0 % | 60.00 |", printed, rel=rel)                      # beyond the tolerance
    assert ds.compare("features.2.conv 4 1153 1.000 580 1.84e+04 0.481 0 1.77e+04", printed, rel=rel)  # integer
    assert ds.compare("features.2.conv 4 1152 1.000 580 1.84e+04 0.481 1.77e+04", printed, rel=rel)  # one fewer
    assert ds.compare("features.3.conv 4 1152 1.000 580 1.84e+04 0.481 0 1.77e+04", printed, rel=rel)  # a word
    assert ds.same_line('"test_accuracy": 0.9,', '"test_accuracy": 0.9055555555555556,', rel)
    assert not ds.same_line('"epochs": 3,', '"epochs": 4,', rel)


def test_every_quoted_output_belongs_to_a_block():
    """An output block the parser attached to nothing would never be compared: in the guide every
    unlabelled block is an output; in the README the only one is the neuron's equations."""
    def unlabelled(doc):
        opening, inside = [], False
        for i, line in enumerate(ds.DOCS[doc].read_text().splitlines(), 1):
            if line.strip().startswith("```"):
                if not inside and line.strip() == "```":
                    opening.append(i)
                inside = not inside
        return opening
    attached = {doc: [b.line for b in ds.parse(doc) if b.output is not None] for doc in ds.DOCS}
    assert len(unlabelled("docs/guide.md")) == len(attached["docs/guide.md"]) == 5
    assert len(unlabelled("README.md")) == 1 and attached["README.md"] == []


def test_extras_exist():
    text = (ds.REPO / "pyproject.toml").read_text()
    for extra in ("events", "nir", "tensorboard", "test"):
        assert re.search(rf"^{extra} = \[", text, flags=re.M), extra


@pytest.mark.slow
def test_fast_subset_is_a_real_subset():
    """README: ``-m "not slow"`` skips the end-to-end runs; it must select tests and leave some out."""
    def count(*args):
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                             cwd=ds.REPO, capture_output=True, text=True, timeout=300).stdout
        return int(re.search(r"(\d+) tests? collected", out).group(1)) if "collected" in out else \
            sum(1 for line in out.splitlines() if "::" in line)
    fast, slow = count("-m", "not slow"), count("-m", "slow")
    assert fast > 500 and slow > 50, (fast, slow)


def _help(argv: list[str]) -> str:
    """``spikeprune ARGV --help``, in this process (the CLI's own parser)."""
    import contextlib
    import io

    from spikeprune.cli import build_parser
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        build_parser().parse_args([*argv, "--help"])
    assert done.value.code == 0, argv
    return out.getvalue()


def test_inline_commands_use_flags_that_exist():
    """Commands quoted in the prose (not run: they name the reader's files) use real commands and flags."""
    seen = 0
    for doc in ds.DOCS:
        for span in ds.inline_commands(doc):
            words = span.split()
            if len(words) < 2 or "<" in words[1] or not re.fullmatch(r"[a-z]+", words[1]):
                continue
            argv = words[1:3] if words[1] in ("analyze", "theory") and len(words) > 2 else words[1:2]
            helptext = _help(argv)
            for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", span):
                assert re.search(rf"(?<![\w-]){re.escape(flag)}\b", helptext), (doc, span, flag)
            seen += 1
    assert seen >= 4


def test_readme_model_table_and_dataset_sizes():
    """The README's parameter counts and digit counts are what the models and the dataset have."""
    import spikeprune as sp
    text = ds.DOCS["README.md"].read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| .* \| ([\d.]+) M", text, flags=re.M))
    assert set(rows) == {"convnet", "mlp", "vgg16", "resnet19"}, rows
    for name, millions in rows.items():
        small = name in ("convnet", "mlp")
        model = sp.create_model(name, 10, 1 if small else 3, T=1, image_size=28 if small else 32)
        n = sum(p.numel() for p in model.parameters())
        assert f"{n / 1e6:.{len(millions.split('.')[1])}f}" == millions, (name, n, millions)
    digits = sp.load_dataset("digits")
    n_train, n_test = (int(x) for x in re.search(r"(\d+) train / (\d+) test\)", text).groups())
    assert (len(digits.train_labels), len(digits.test_labels)) == (n_train, n_test)
    assert f"on the {n_test} test digits" in text


# --- slow: run the documents ------------------------------------------------------------------------------

def _run_doc(doc: str, root: Path) -> dict[str, str]:
    """Runs every block of ``doc`` in order in ``root`` (a fresh folder) and checks its quoted outputs.
    Returns the output of each command (scripts: ``python@LINE``)."""
    env = ds.environment(root / "home")
    (root / "configs").symlink_to(ds.REPO / "configs")  # the documents' commands run in a clone: presets at hand
    synthetic_nmnist(root / "home" / "data", per_class=3)
    outputs: dict[str, str] = {}
    for block in ds.parse(doc):
        if block.lang == "python":
            res = ds.run_script(block.text, root, env, f"{block.line}")
            assert res.returncode == 0, f"{doc}:{block.line} (python) failed:\n{res.stdout[-3000:]}"
            printed = [line.strip() for line in res.stdout.splitlines()]
            for expected in ds.script_expectations(block.text):
                assert expected in printed, f"{doc}:{block.line}: prints {printed}, the document says {expected!r}"
            outputs[f"python@{block.line}"] = res.stdout
            continue
        text = ""
        for command in block.commands:
            if command in NOT_RUN:
                continue
            started = time.perf_counter()
            res = ds.run_shell(_shrunk(command), root, env)
            print(f"{time.perf_counter() - started:6.1f} s  {doc}:{block.line}: {command[:90]}")  # shown with -s / on failure
            assert res.returncode == 0, f"{doc}:{block.line}: {_shrunk(command)!r} failed:\n{res.stdout[-3000:]}"
            text += res.stdout
            outputs[command] = res.stdout
        if block.output is not None:
            missing = ds.compare(block.output, text, VOLATILE, rel=ds.RESULT_TOLERANCE)
            assert not missing, (f"{doc}:{block.line}: the quoted output is not what {block.commands} prints now; "
                                 f"lines not found: {missing}\n--- printed ---\n{text[-4000:]}")
    return outputs


def _glob(name: str) -> str:
    """A quoted name as a glob: ``<anything>`` is a wildcard, ``OUT/`` any run folder, ``<cache>/`` the
    cache of one dataset (the commands here pass ``--data-dir ~/data``, so it is ``~/data/<name>/``)."""
    name = name.replace("<cache>/", "~/data/<name>/").replace("OUT/", "*/")  # the cache of --data-dir ~/data
    return re.sub(r"<[^>]+>", "*", name).rstrip("/")


@pytest.mark.slow
def test_guide_runs_as_written_and_prints_what_it_quotes(tmp_path):
    _run_doc("docs/guide.md", tmp_path)
    # every file or folder name the guide quotes exists after its commands ran
    home = tmp_path / "home"
    for name in ds.inline_files("docs/guide.md"):
        if name in NOT_OUTPUT:
            continue
        pattern = _glob(name)
        if pattern.startswith("~/"):
            hits = list(home.glob(pattern[2:]))
        elif pattern.startswith("runs/"):
            hits = list(tmp_path.glob(pattern))
        elif pattern.startswith("*/"):  # OUT/...: some run folder holds it
            hits = list((tmp_path / "runs").glob("**/" + pattern[2:]))
        else:
            hits = list((tmp_path / "runs" / "guide").glob("**/" + pattern))
        assert hits, f"docs/guide.md quotes `{name}`, which none of its commands produced"


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory) -> Path:
    """The README's first command's run folder: CI's own (``SPIKEPRUNE_QUICKSTART_OUT``, set by .ci/run after
    it ran ``spikeprune quickstart`` as the README says), else a run here with the same command."""
    given = os.environ.get("SPIKEPRUNE_QUICKSTART_OUT")
    if given:
        assert (Path(given) / "metrics.json").is_file(), f"SPIKEPRUNE_QUICKSTART_OUT={given} holds no quickstart run"
        return Path(given)
    root = tmp_path_factory.mktemp("quickstart")
    res = ds.run_shell("spikeprune quickstart", root, ds.environment(root / "home"))
    assert res.returncode == 0, res.stdout[-3000:]
    return root / "runs" / "quickstart"


@pytest.mark.slow
def test_readme_quickstart_numbers(quickstart_run):
    text = re.sub(r"\s+", " ", ds.DOCS["README.md"].read_text())
    metrics = json.loads((quickstart_run / "metrics.json").read_text())
    quoted = re.search(r"trains a dense spiking convnet \(([\d.]+) % on the (\d+) test digits", text)
    assert quoted, "README no longer quotes the quickstart's dense accuracy"
    # within one point (3 of the 360 digits): another CPU's kernels sum in another order (99.2 / 99.4 % seen)
    assert abs(100 * metrics["test_accuracy"] - float(quoted.group(1))) <= 1.0, (metrics["test_accuracy"], quoted.group(1))
    assert "Everything lands in `runs/quickstart/`" in text
    for name in ("metrics.json", "history.csv", "checkpoint.safetensors"):
        assert (quickstart_run / name).is_file(), name
    for name in ("rounds.csv", "results.json"):  # the lottery's summary files the README names
        assert list(quickstart_run.glob(f"**/{name}")), name


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir() and not os.environ.get("CI"),
                    reason="Fashion-MNIST is not installed (.ci/run installs it; in CI this test never skips)")
def test_readme_runs_at_tiny_size(tmp_path):
    outputs = _run_doc("README.md", tmp_path)
    runs = tmp_path / "runs"
    for name in ("checkpoint.safetensors", "history.csv", "metrics.json"):
        assert (runs / "fmnist" / name).is_file(), name
    for name in ("rounds.csv", "results.json"):
        assert (runs / "sf1" / name).is_file(), name
    # "92.3 %, 226k params, T = 4" of the preset: the parameters from this run, the accuracy from its record
    preset = json.loads((runs / "fmnist-w1.5" / "metrics.json").read_text())
    text = ds.DOCS["README.md"].read_text()
    acc, kparams = re.search(r"fashion_mnist_convnet\.yaml --out \S+ +# ([\d.]+) %, (\d+)k params", text).groups()
    assert round(preset["num_parameters"] / 1000) == int(kparams), preset["num_parameters"]
    record = (ds.REPO / "benchmarks" / "RESULTS.md").read_text()
    assert re.search(rf"\b{re.escape(acc)}\d? ?%", record), f"benchmarks/RESULTS.md does not record {acc} %"
    evaluated = json.loads((runs / "fmnist-eval" / "metrics.json").read_text())
    assert f"{evaluated['test_accuracy']}" in outputs["spikeprune evaluate --checkpoint runs/fmnist/checkpoint.safetensors "
                                                    "--out runs/fmnist-eval"]
