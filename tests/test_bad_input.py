"""Careless and hostile input, table-driven: every command refuses in one line, exit code 2, and writes nothing.

Each row is one bad invocation. The test asserts, for every row: exit code 2; exactly one non-empty line on
stderr; no traceback; and no file or directory created, changed or removed anywhere under the test's folder
(which holds every input file, and is the working directory). The classes covered: out-of-range, wrong-type,
NaN/inf values; sizes that cannot fit in memory; missing, corrupt, truncated, foreign, pickled and
hostile files (valid JSON metadata of the wrong shape, 200 000-deep arrays, absurd image sizes); bad YAML
presets and ``--config`` on every command; user code that raises, exits or does not parse; conflicting
flags; unwritable or empty output paths. Issue 13.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from spikeprune.engine import data as data_module
from spikeprune.cli import main

TINY = ["--model", "convnet", "--width", "0.25", "--timesteps", "2", "--epochs", "1", "--batch-size", "32",
        "--train-limit", "64", "--test-limit", "32", "--no-progress"]


def _checkpoint_with_meta(path: Path, good: Path, meta_text: str) -> None:
    """A valid safetensors file holding the good checkpoint's tensors and ``meta_text`` as spikeprune metadata."""
    from safetensors.torch import load_file

    save_file(load_file(str(good)), str(path), metadata={"spikeprune": meta_text})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every input file a row refers to, written once; the module's rows only read them."""
    root = tmp_path_factory.mktemp("bad_input")
    f: dict[str, Path] = {"root": root}
    run = root / "run"
    assert main(["train", *TINY, "--dataset", "digits", "--out", str(run)]) == 0
    good = run / "checkpoint.safetensors"
    f["ck"] = good
    f["run"] = run
    meta = json.loads(__import__("safetensors").safe_open(str(good), framework="pt").metadata()["spikeprune"])
    (root / "corrupt.safetensors").write_bytes(os.urandom(4096))
    f["corrupt"] = root / "corrupt.safetensors"
    (root / "truncated.safetensors").write_bytes(good.read_bytes()[:600])
    f["truncated"] = root / "truncated.safetensors"
    save_file({"w": torch.zeros(3)}, str(root / "foreign.safetensors"))
    f["foreign"] = root / "foreign.safetensors"
    deep = "[" * 200_000 + "]" * 200_000
    _checkpoint_with_meta(root / "deep.safetensors", good, deep)
    f["deep"] = root / "deep.safetensors"
    _checkpoint_with_meta(root / "list.safetensors", good, json.dumps([meta]))
    f["listmeta"] = root / "list.safetensors"
    huge = json.loads(json.dumps(meta))
    huge["model_config"]["image_size"] = [100000, 100000]
    _checkpoint_with_meta(root / "huge.safetensors", good, json.dumps(huge))
    f["hugeimg"] = root / "huge.safetensors"
    wrong = json.loads(json.dumps(meta))
    wrong["model_config"] = "convnet"
    _checkpoint_with_meta(root / "wrongtype.safetensors", good, json.dumps(wrong))
    f["wrongtype"] = root / "wrongtype.safetensors"
    wide = json.loads(json.dumps(meta))
    wide["model_config"]["width"] = 60.0
    wide["model_config"]["image_size"] = [4096, 4096]
    _checkpoint_with_meta(root / "wide.safetensors", good, json.dumps(wide))
    f["wide"] = root / "wide.safetensors"
    (root / "model.pt").write_bytes(pickle.dumps({"model": [1, 2, 3]}))
    f["pickle"] = root / "model.pt"
    (root / "bad.yaml").write_text("epochs: [1, 2\n")
    f["badyaml"] = root / "bad.yaml"
    (root / "list.yaml").write_text("- epochs\n- 3\n")
    f["listyaml"] = root / "list.yaml"
    (root / "binary.yaml").write_bytes(b"\x00\xff\xfe epochs: 3\n")  # not UTF-8 text (e.g. a checkpoint renamed)
    f["binaryyaml"] = root / "binary.yaml"
    (root / "unknown.yaml").write_text("no_such_option: 3\n")
    f["unknownyaml"] = root / "unknown.yaml"
    (root / "typed.yaml").write_text("timesteps: abc\n")
    f["typedyaml"] = root / "typed.yaml"
    (root / "nan.yaml").write_text("lr: .nan\n")
    f["nanyaml"] = root / "nan.yaml"
    (root / "batch.yaml").write_text("batch_size: 0\n")
    f["batchyaml"] = root / "batch.yaml"
    (root / "a_file").write_text("not a directory\n")
    f["file"] = root / "a_file"
    (root / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    f["deepjson"] = root / "deep.json"
    (root / "list.json").write_text("[1, 2, 3]\n")
    f["listjson"] = root / "list.json"
    (root / "notjson.json").write_text("{test_accuracy: 0.9\n")
    f["notjson"] = root / "notjson.json"
    other = {"test_accuracy": 0.4, "config": {**meta["config"], "dataset": "fashion_mnist", "model": "convnet"}}
    (root / "other_metrics.json").write_text(json.dumps(other))
    f["otherref"] = root / "other_metrics.json"
    mlp = root / "mlp"
    assert main(["train", "--model", "mlp", "--width", "0.25", "--timesteps", "2", "--epochs", "1",
                 "--train-limit", "32", "--test-limit", "16", "--no-progress", "--out", str(mlp)]) == 0
    from spikeprune.tickets.masks import Mask
    from spikeprune.engine.train import load_model

    mlp_model, _ = load_model(mlp / "checkpoint.safetensors")
    Mask.ones(mlp_model).save(root / "mlp_mask.safetensors")
    f["othermask"] = root / "mlp_mask.safetensors"
    code = {
        "raises": "def build():\n    raise RuntimeError('my factory is broken')\n",
        "noimport": "import no_such_package_xyz\n\ndef build():\n    return None\n",
        "syntax": "def build(:\n    return 1\n",
        "exits": "import sys\n\ndef build():\n    sys.exit(3)\n",
        "exits0": "import sys\n\ndef build():\n    sys.exit(0)\n",
        "importexit": "raise SystemExit('bye')\n",
        "notmodule": "def build():\n    return 42\n",
        "nameerror": "def build():\n    return undefined_name\n",
        "good": "import torch\n\ndef build():\n    return torch.nn.Linear(64, 10)\n",
    }
    for name, text in code.items():
        (root / f"{name}.py").write_text(text)
        f[f"py_{name}"] = root / f"{name}.py"
    return f


#: (id, argv). ``{name}`` is a file of the fixture; ``{new}`` a directory that must not come to exist.
ROWS: list[tuple[str, list[str]]] = [
    # --- quickstart ---
    ("qs-rounds-negative", ["quickstart", "--rounds", "-1", "--out", "{new}"]),
    ("qs-epochs-zero", ["quickstart", "--epochs", "0", "--out", "{new}"]),
    ("qs-prune-fraction", ["quickstart", "--prune-fraction", "1.5", "--out", "{new}"]),
    ("qs-timesteps-zero", ["quickstart", "--timesteps", "0", "--out", "{new}"]),
    ("qs-width-nan", ["quickstart", "--width", "nan", "--out", "{new}"]),
    ("qs-lr-inf", ["quickstart", "--lr", "inf", "--out", "{new}"]),
    ("qs-out-empty", ["quickstart", "--out", ""]),
    ("qs-config-missing", ["quickstart", "--config", "{root}/missing.yaml", "--out", "{new}"]),
    ("qs-config-bad-yaml", ["quickstart", "--config", "{badyaml}", "--out", "{new}"]),
    ("qs-edgepopup-epochs", ["quickstart", "--edgepopup-epochs", "-3", "--out", "{new}"]),
    ("qs-rewind-past-end", ["quickstart", "--rewind-epoch", "50", "--out", "{new}"]),
    ("qs-dataset-unknown", ["quickstart", "--dataset", "nope", "--out", "{new}"]),
    # --- train ---
    ("train-timesteps-huge", ["train", "--timesteps", "100000000", "--out", "{new}"]),
    ("train-width-huge", ["train", "--width", "100000", "--out", "{new}"]),
    ("train-batch-huge", ["train", "--model", "vgg16", "--dataset", "synthetic", "--batch-size", "10000000",
                          "--out", "{new}"]),
    # event datasets (issue 15): the encoding goes with the kind of dataset
    ("train-events-on-images", ["train", "--encoding", "events", "--out", "{new}"]),
    ("train-nmnist-direct", ["train", "--dataset", "nmnist", "--out", "{new}"]),
    ("train-nmnist-bins-zero", ["train", "--dataset", "nmnist:time_bins=0", "--encoding", "events", "--out", "{new}"]),
    ("train-nmnist-option-unknown", ["train", "--dataset", "nmnist:bins=3", "--encoding", "events", "--out", "{new}"]),
    ("train-batch-zero", ["train", "--batch-size", "0", "--out", "{new}"]),
    ("train-beta-range", ["train", "--beta", "1.5", "--out", "{new}"]),
    ("train-uth-negative", ["train", "--u-th", "-1", "--out", "{new}"]),
    ("train-surrogate-unknown", ["train", "--surrogate", "nope", "--out", "{new}"]),
    ("train-epochs-float", ["train", "--epochs", "2.5", "--out", "{new}"]),
    ("train-epochs-text", ["train", "--epochs", "ten", "--out", "{new}"]),
    ("train-config-list", ["train", "--config", "{listyaml}", "--out", "{new}"]),
    ("train-config-binary", ["train", "--config", "{binaryyaml}", "--out", "{new}"]),
    ("train-config-unknown-key", ["train", "--config", "{unknownyaml}", "--out", "{new}"]),
    ("train-config-wrong-type", ["train", "--config", "{typedyaml}", "--out", "{new}"]),
    ("train-config-nan", ["train", "--config", "{nanyaml}", "--out", "{new}"]),
    ("train-config-is-dir", ["train", "--config", "{root}", "--out", "{new}"]),
    ("train-out-under-file", ["train", "--out", "{file}/sub"]),
    ("train-out-empty", ["train", "--out", ""]),
    ("train-model-unknown", ["train", "--model", "nope", "--out", "{new}"]),
    ("train-seed-negative", ["train", "--seed", "-1", "--out", "{new}"]),
    ("train-train-limit-zero", ["train", "--train-limit", "0", "--out", "{new}"]),
    ("train-momentum-one", ["train", "--momentum", "1", "--out", "{new}"]),
    ("train-alpha-negative", ["train", "--surrogate-alpha", "-1", "--out", "{new}"]),
    ("train-device-bogus", ["train", "--device", "tpu", "--out", "{new}"]),
    ("train-unknown-flag", ["train", "--no-such-flag", "--out", "{new}"]),
    ("train-existing-run", ["train", *TINY, "--out", "{run}"]),
    ("train-tdbn-not-resnet", ["train", "--tdbn", "--out", "{new}"]),
    # --- evaluate ---
    ("eval-ck-missing", ["evaluate", "--checkpoint", "{root}/missing.safetensors", "--out", "{new}"]),
    ("eval-ck-corrupt", ["evaluate", "--checkpoint", "{corrupt}", "--out", "{new}"]),
    ("eval-ck-truncated", ["evaluate", "--checkpoint", "{truncated}", "--out", "{new}"]),
    ("eval-ck-foreign", ["evaluate", "--checkpoint", "{foreign}", "--out", "{new}"]),
    ("eval-ck-deep-json", ["evaluate", "--checkpoint", "{deep}", "--out", "{new}"]),
    ("eval-ck-list-meta", ["evaluate", "--checkpoint", "{listmeta}", "--out", "{new}"]),
    ("eval-ck-huge-image", ["evaluate", "--checkpoint", "{hugeimg}", "--out", "{new}"]),
    ("eval-ck-wrong-type", ["evaluate", "--checkpoint", "{wrongtype}", "--out", "{new}"]),
    ("eval-ck-too-wide", ["evaluate", "--checkpoint", "{wide}", "--out", "{new}"]),
    ("eval-ck-pickle", ["evaluate", "--checkpoint", "{pickle}", "--out", "{new}"]),
    ("eval-ck-directory", ["evaluate", "--checkpoint", "{run}", "--out", "{new}"]),
    ("eval-ck-empty", ["evaluate", "--checkpoint", "", "--out", "{new}"]),
    ("eval-ck-absent", ["evaluate", "--out", "{new}"]),
    ("eval-batch-zero", ["evaluate", "--checkpoint", "{ck}", "--batch-size", "0", "--out", "{new}"]),
    ("eval-config-missing", ["evaluate", "--checkpoint", "{ck}", "--config", "{root}/nope.yaml", "--out", "{new}"]),
    ("eval-config-unknown", ["evaluate", "--checkpoint", "{ck}", "--config", "{unknownyaml}", "--out", "{new}"]),
    ("eval-config-bad-value", ["evaluate", "--checkpoint", "{ck}", "--config", "{batchyaml}", "--out", "{new}"]),
    ("eval-dataset-shape", ["evaluate", "--checkpoint", "{ck}", "--dataset", "synthetic", "--out", "{new}"]),
    ("eval-dataset-unknown", ["evaluate", "--checkpoint", "{ck}", "--dataset", "nope", "--out", "{new}"]),
    ("eval-mask-other-arch", ["evaluate", "--checkpoint", "{ck}", "--mask", "{othermask}", "--out", "{new}"]),
    ("eval-mask-corrupt", ["evaluate", "--checkpoint", "{ck}", "--mask", "{corrupt}", "--out", "{new}"]),
    ("eval-mask-is-checkpoint", ["evaluate", "--checkpoint", "{ck}", "--mask", "{ck}", "--out", "{new}"]),
    ("eval-encoding-unknown", ["evaluate", "--checkpoint", "{ck}", "--encoding", "rate", "--out", "{new}"]),
    ("eval-encoding-events-on-images", ["evaluate", "--checkpoint", "{ck}", "--encoding", "events", "--out", "{new}"]),
    ("eval-seed-text", ["evaluate", "--checkpoint", "{ck}", "--seed", "x", "--out", "{new}"]),
    # --- lottery ---
    ("lot-rounds-zero", ["lottery", "--rounds", "0", "--out", "{new}"]),
    ("lot-fraction-zero", ["lottery", "--prune-fraction", "0", "--out", "{new}"]),
    ("lot-rewind-past-end", ["lottery", "--rewind-epoch", "5", "--epochs", "2", "--out", "{new}"]),
    ("lot-variant-unknown", ["lottery", "--variant", "nope", "--out", "{new}"]),
    ("lot-criterion-unknown", ["lottery", "--criterion", "nope", "--out", "{new}"]),
    ("lot-jobs-zero", ["lottery", "--jobs", "0", "--out", "{new}"]),
    ("lot-seeds-text", ["lottery", "--seeds", "a,b", "--out", "{new}"]),
    ("lot-seeds-negative", ["lottery", "--seeds", "0,-2", "--out", "{new}"]),
    ("lot-threads-zero", ["lottery", "--seeds", "0", "--threads", "0", "--out", "{new}"]),
    ("lot-variants-unknown", ["lottery", "--variants", "imp,nope", "--out", "{new}"]),
    ("lot-calibration-zero", ["lottery", "--calibration-batches", "0", "--out", "{new}"]),
    ("lot-sf-with-magnitude", ["lottery", "--variant", "sf-imp-1", "--criterion", "magnitude", "--out", "{new}"]),
    ("lot-scope-unknown", ["lottery", "--scope", "nope", "--out", "{new}"]),
    ("lot-config-missing", ["lottery", "--config", "{root}/none.yaml", "--out", "{new}"]),
    # --- edgepopup ---
    ("ep-density-zero", ["edgepopup", "--density", "0", "--out", "{new}"]),
    ("ep-density-above-one", ["edgepopup", "--density", "1.5", "--out", "{new}"]),
    ("ep-density-and-densities", ["edgepopup", "--density", "0.3", "--densities", "0.1,0.5", "--out", "{new}"]),
    ("ep-default-density-and-densities", ["edgepopup", "--density", "0.5", "--densities", "0.1,0.3",
                                          "--out", "{new}"]),
    ("ep-densities-repeated", ["edgepopup", "--densities", "0.5,0.5", "--out", "{new}"]),
    ("ep-densities-nan", ["edgepopup", "--densities", "0.5,nan", "--out", "{new}"]),
    ("ep-reference-deep-json", ["edgepopup", *TINY, "--reference", "{deepjson}", "--out", "{new}"]),
    ("ep-reference-list-json", ["edgepopup", *TINY, "--reference", "{listjson}", "--out", "{new}"]),
    ("ep-reference-not-json", ["edgepopup", *TINY, "--reference", "{notjson}", "--out", "{new}"]),
    ("ep-reference-other-dataset", ["edgepopup", *TINY, "--reference", "{otherref}", "--out", "{new}"]),
    ("ep-reference-missing", ["edgepopup", *TINY, "--reference", "{root}/nope", "--out", "{new}"]),
    ("ep-init-unknown", ["edgepopup", "--init", "nope", "--out", "{new}"]),
    ("ep-jobs-negative", ["edgepopup", "--jobs", "-1", "--out", "{new}"]),
    # --- compress ---
    ("cmp-bits-zero", ["compress", "--bits", "0", "--out", "{new}"]),
    ("cmp-bits-17", ["compress", "--bits", "17", "--out", "{new}"]),
    ("cmp-membrane-bits-one", ["compress", "--membrane-bits", "1", "--out", "{new}"]),
    ("cmp-channel-sparsity-one", ["compress", "--channel-sparsity", "1", "--out", "{new}"]),
    ("cmp-ck-corrupt", ["compress", "--checkpoint", "{corrupt}", "--out", "{new}"]),
    ("cmp-ck-missing", ["compress", "--checkpoint", "{root}/missing.safetensors", "--out", "{new}"]),
    ("cmp-ck-deep", ["compress", "--checkpoint", "{deep}", "--out", "{new}"]),
    ("cmp-percentile-zero", ["compress", "--percentile", "0", "--out", "{new}"]),
    ("cmp-finetune-lr-nan", ["compress", "--finetune-lr", "nan", "--out", "{new}"]),
    ("cmp-criterion-unknown", ["compress", "--channel-criterion", "nope", "--out", "{new}"]),
    # issue 17: the former flag is refused naming the new one
    ("cmp-criterion-renamed", ["compress", "--criterion", "svs", "--out", "{new}"]),
    # --- cost ---
    ("cost-ck-corrupt", ["cost", "--checkpoint", "{corrupt}", "--out", "{new}"]),
    ("cost-ck-deep", ["cost", "--checkpoint", "{deep}", "--out", "{new}"]),
    ("cost-ck-list-meta", ["cost", "--checkpoint", "{listmeta}"]),
    ("cost-batches-zero", ["cost", "--checkpoint", "{ck}", "--batches", "0"]),
    ("cost-batch-size-negative", ["cost", "--checkpoint", "{ck}", "--batch-size", "-5"]),
    ("cost-bits-zero", ["cost", "--checkpoint", "{ck}", "--bits", "0"]),
    ("cost-e-mac-nan", ["cost", "--checkpoint", "{ck}", "--e-mac", "nan"]),
    ("cost-e-ac-negative", ["cost", "--checkpoint", "{ck}", "--e-ac", "-1"]),
    ("cost-latency-negative", ["cost", "--checkpoint", "{ck}", "--latency-repeats", "-1"]),
    ("cost-threads-zero", ["cost", "--checkpoint", "{ck}", "--threads", "0"]),
    ("cost-mask-corrupt", ["cost", "--checkpoint", "{ck}", "--mask", "{corrupt}"]),
    ("cost-config-unknown", ["cost", "--checkpoint", "{ck}", "--config", "{unknownyaml}"]),
    ("cost-out-under-file", ["cost", "--checkpoint", "{ck}", "--latency-repeats", "0", "--out", "{file}/x"]),
    # --- analyze flips ---
    ("flips-perturb-bogus", ["analyze", "flips", "--checkpoint", "{ck}", "--perturb", "bogus", "--out", "{new}"]),
    ("flips-prune-above-one", ["analyze", "flips", "--checkpoint", "{ck}", "--perturb", "prune:1.5", "--out", "{new}"]),
    ("flips-quantize-zero", ["analyze", "flips", "--checkpoint", "{ck}", "--perturb", "quantize:0", "--out", "{new}"]),
    ("flips-noise-nan", ["analyze", "flips", "--checkpoint", "{ck}", "--perturb", "weight-noise:nan",
                         "--out", "{new}"]),
    ("flips-mask-missing", ["analyze", "flips", "--checkpoint", "{ck}", "--perturb", "prune:{root}/nope.safetensors",
                            "--out", "{new}"]),
    ("flips-samples-zero", ["analyze", "flips", "--checkpoint", "{ck}", "--perturb", "prune:0.5", "--samples", "0",
                            "--out", "{new}"]),
    ("flips-ck-corrupt", ["analyze", "flips", "--checkpoint", "{corrupt}", "--perturb", "prune:0.5", "--out", "{new}"]),
    ("flips-config-missing", ["analyze", "flips", "--checkpoint", "{ck}", "--perturb", "prune:0.5", "--config",
                              "{root}/nope.yaml", "--out", "{new}"]),
    ("flips-mode-unknown", ["analyze", "flips", "--checkpoint", "{ck}", "--perturb", "prune:0.5", "--mode", "all",
                            "--out", "{new}"]),
    ("flips-no-perturb", ["analyze", "flips", "--checkpoint", "{ck}", "--out", "{new}"]),
    ("validity-groups-one", ["analyze", "validity", "--checkpoint", "{ck}", "--groups", "1", "--out", "{new}"]),
    ("validity-criterion-unknown", ["analyze", "validity", "--checkpoint", "{ck}", "--criteria", "sf", "nope",
                                    "--out", "{new}"]),
    ("validity-ck-deep", ["analyze", "validity", "--checkpoint", "{deep}", "--out", "{new}"]),
    ("validity-samples-zero", ["analyze", "validity", "--checkpoint", "{ck}", "--samples", "0", "--out", "{new}"]),
    ("validity-config-missing", ["analyze", "validity", "--checkpoint", "{ck}", "--config", "{root}/nope.yaml",
                                 "--out", "{new}"]),
    # --- theory ---
    ("slth-N-huge", ["theory", "slth", "--N", "100000", "--eps", "0.1", "--out", "{new}"]),
    ("slth-N-zero", ["theory", "slth", "--N", "0", "--eps", "0.1", "--out", "{new}"]),
    ("slth-eps-zero", ["theory", "slth", "--N", "4", "--eps", "0", "--out", "{new}"]),
    ("slth-eps-nan", ["theory", "slth", "--N", "4", "--eps", "nan", "--out", "{new}"]),
    ("slth-equality-above-trials", ["theory", "slth", "--N", "4", "--eps", "0.1", "--trials", "5",
                                    "--equality-trials", "20", "--out", "{new}"]),
    ("slth-uth-above-one", ["theory", "slth", "--N", "4", "--eps", "0.1", "--u-th", "1.5", "--out", "{new}"]),
    ("slth-config-missing", ["theory", "slth", "--N", "4", "--eps", "0.1", "--config", "{root}/nope.yaml",
                             "--out", "{new}"]),
    ("slth-config-unknown", ["theory", "slth", "--N", "4", "--eps", "0.1", "--config", "{unknownyaml}",
                             "--out", "{new}"]),
    ("slth-k-below-N", ["theory", "slth", "--N", "4", "--eps", "0.1", "--k", "2,8", "--out", "{new}"]),
    ("slth-samples-zero", ["theory", "slth", "--N", "4", "--eps", "0.1", "--samples", "0", "--out", "{new}"]),
    ("slth-N-missing", ["theory", "slth", "--eps", "0.1", "--out", "{new}"]),
    ("width-psup-negative", ["theory", "width", "--N", "4", "--eps", "0.1", "--p-sup", "-1"]),
    ("width-beta-one", ["theory", "width", "--N", "4", "--eps", "0.1", "--p-sup", "1", "--beta", "1"]),
    ("width-delta-zero", ["theory", "width", "--N", "4", "--eps", "0.1", "--p-sup", "1", "--delta", "0"]),
    ("width-N-zero", ["theory", "width", "--N", "0", "--eps", "0.1", "--p-sup", "1"]),
    # --- interop ---
    ("interop-factory-raises", ["interop", "--model", "{py_raises}:build", "--out", "{new}"]),
    ("interop-missing-import", ["interop", "--model", "{py_noimport}:build", "--out", "{new}"]),
    ("interop-syntax-error", ["interop", "--model", "{py_syntax}:build", "--out", "{new}"]),
    ("interop-factory-exits", ["interop", "--model", "{py_exits}:build", "--out", "{new}"]),
    ("interop-factory-exits-0", ["interop", "--model", "{py_exits0}:build", "--out", "{new}"]),
    ("interop-import-exits", ["interop", "--model", "{py_importexit}:build", "--out", "{new}"]),
    ("interop-name-error", ["interop", "--model", "{py_nameerror}:build", "--out", "{new}"]),
    ("interop-not-a-module", ["interop", "--model", "{py_notmodule}:build", "--out", "{new}"]),
    ("interop-no-such-function", ["interop", "--model", "{py_good}:nope", "--out", "{new}"]),
    ("interop-no-spiking-neuron", ["interop", "--model", "{py_good}:build", "--out", "{new}"]),
    ("interop-missing-file", ["interop", "--model", "{root}/missing.py:build", "--out", "{new}"]),
    ("interop-missing-package", ["interop", "--model", "no_such_package_xyz.nets:build", "--out", "{new}"]),
    ("interop-spec-no-colon", ["interop", "--model", "justaname", "--out", "{new}"]),
    ("interop-sparsity-range", ["interop", "--model", "{py_good}:build", "--sparsity", "1.5", "--out", "{new}"]),
    ("interop-timesteps-zero", ["interop", "--model", "{py_good}:build", "--timesteps", "0", "--out", "{new}"]),
    ("interop-weights-pickle", ["interop", "--model", "{py_good}:build", "--weights", "{pickle}", "--out", "{new}"]),
    ("interop-criterion-unknown", ["interop", "--model", "{py_good}:build", "--criterion", "nope", "--out", "{new}"]),
    # --- export ---
    ("export-ck-corrupt", ["export", "--checkpoint", "{corrupt}", "--out", "{root}/x.nir"]),
    ("export-ck-deep", ["export", "--checkpoint", "{deep}", "--out", "{root}/x.nir"]),
    ("export-out-under-file", ["export", "--checkpoint", "{ck}", "--out", "{file}/x.nir"]),
    ("export-dt-zero", ["export", "--checkpoint", "{ck}", "--dt", "0", "--out", "{root}/x.nir"]),
    ("export-dt-nan", ["export", "--checkpoint", "{ck}", "--dt", "nan", "--out", "{root}/x.nir"]),
    ("export-mask-corrupt", ["export", "--checkpoint", "{ck}", "--mask", "{corrupt}", "--out", "{root}/x.nir"]),
    ("export-format-unknown", ["export", "--checkpoint", "{ck}", "--format", "onnx", "--out", "{root}/x.nir"]),
    # --- reproduce ---
    ("repro-jobs-zero", ["reproduce", "fig5", "--jobs", "0", "--out", "{new}"]),
    ("repro-threads-zero", ["reproduce", "fig5", "--threads", "0", "--out", "{new}"]),
    ("repro-from-missing", ["reproduce", "fig5", "--from-results", "{root}/nope", "--out", "{new}"]),
    ("repro-study-unknown", ["reproduce", "fig9", "--out", "{new}"]),
    ("repro-scale-unknown", ["reproduce", "fig5", "--scale", "huge", "--out", "{new}"]),
    ("repro-out-empty", ["reproduce", "fig5", "--out", ""]),
    # --- the program itself ---
    ("command-unknown", ["nosuchcommand"]),
]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with (size, mtime): a created, changed or removed file shows as a difference.

    An existing run folder's lock file is rewritten by whoever takes the lock (its holder's pid): it is not
    a result, so it alone is left out (spikeprune.core.rundir)."""
    from spikeprune.core.rundir import LOCK_FILE

    # Directories count by existence: probing that a folder is writable touches its mtime, not its files.
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
            for p in root.rglob("*") if p.name != LOCK_FILE}


@pytest.fixture(autouse=True)
def offline(monkeypatch, files):
    def refuse(url, out):
        raise urllib.error.URLError("network is unreachable")
    monkeypatch.setattr(data_module, "_fetch", refuse)
    monkeypatch.setattr(data_module, "CACHE_ROOT", files["root"] / "cache")
    monkeypatch.chdir(files["root"])  # a command that wrote into the working directory would show


@pytest.mark.slow
def test_the_table_covers_every_command():
    from spikeprune.cli import COMMANDS

    assert len(ROWS) >= 80
    assert len({row_id for row_id, _ in ROWS}) == len(ROWS)
    assert set(COMMANDS) <= {argv[0] for _, argv in ROWS}


@pytest.mark.parametrize("row_id,argv", ROWS, ids=[r[0] for r in ROWS])
def test_bad_invocation_refused_in_one_line(files, capsys, row_id, argv):
    root = files["root"]
    names = {k: str(v) for k, v in files.items()} | {"new": str(root / "new-out")}
    args = [a.format(**names) for a in argv]
    before = _snapshot(root)
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}; stderr: {err}"
    assert len(lines) == 1, f"stderr has {len(lines)} lines: {err}"
    assert "Traceback" not in err and "internal error" not in err, err
    assert _snapshot(root) == before, "a refused command created, changed or removed files"


@pytest.mark.parametrize("argv", [
    ["theory", "slth", "--N", "100000", "--eps", "0.1", "--out", "{new}"],
    ["train", "--timesteps", "100000000", "--out", "{new}"],
    ["interop", "--model", "{py_syntax}:build", "--out", "{new}"],
    ["evaluate", "--checkpoint", "{deep}", "--out", "{new}"],
], ids=["slth-N-huge", "train-T-huge", "interop-syntax", "eval-deep-json"])
@pytest.mark.slow
def test_bad_invocation_in_a_real_process(files, argv):
    """The same guarantees end to end, in a fresh interpreter (no pytest capture or exception handling)."""
    root = files["root"]
    names = {k: str(v) for k, v in files.items()} | {"new": str(root / "new-out-proc")}
    before = _snapshot(root)
    proc = subprocess.run([sys.executable, "-m", "spikeprune.cli", *[a.format(**names) for a in argv]],
                          capture_output=True, text=True, cwd=root, timeout=120,
                          env={**os.environ, "SPIKEPRUNE_DEBUG": ""})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert _snapshot(root) == before


def test_a_bug_is_reported_as_a_bug_not_as_bad_input(capsys, monkeypatch):
    """An exception that is not a UserError (a genuine bug) exits 1 with a report and the debug hint."""
    from spikeprune.cli import evaluate

    def broken(args):
        raise TypeError("unsupported operand type(s) for +: 'NoneType' and 'int'")

    monkeypatch.setattr(evaluate, "run", broken)
    code = main(["evaluate", "--checkpoint", "x", "--out", "y"])
    err = capsys.readouterr().err
    assert code == 1
    assert "internal error" in err and "TypeError" in err and "SPIKEPRUNE_DEBUG=1" in err
    monkeypatch.setenv("SPIKEPRUNE_DEBUG", "1")
    with pytest.raises(TypeError):
        main(["evaluate", "--checkpoint", "x", "--out", "y"])


def test_json_depth_is_bounded_without_recursion():
    from spikeprune.core.diagnostics import UserError
    from spikeprune.core.limits import json_depth, parse_json

    assert json_depth('{"a": [1, {"b": "[[[[["}]}') == 3  # brackets inside strings do not count
    assert parse_json('{"a": [1, 2]}', "x") == {"a": [1, 2]}
    with pytest.raises(UserError, match="65 levels"):
        parse_json("[" * 65 + "]" * 65, "x")
    with pytest.raises(UserError, match="not valid JSON"):
        parse_json("{", "x")


@pytest.mark.parametrize("name", ["corrupt", "truncated", "foreign", "deep", "listmeta", "wrongtype"])
def test_checkpoint_header_reader_refuses_what_the_full_reader_refuses(files, name):
    # core.io.checkpoint_meta reads only the JSON header (compress's recorded settings); it must not
    # let through a file that load_checkpoint refuses, nor word the refusal differently.
    from spikeprune.core.io import checkpoint_meta, load_checkpoint

    with pytest.raises(ValueError) as full:
        load_checkpoint(files[name])
    with pytest.raises(ValueError) as header:
        checkpoint_meta(files[name])
    assert str(header.value) == str(full.value)
    assert checkpoint_meta(files["ck"]) == load_checkpoint(files["ck"])[1]
