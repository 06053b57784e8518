"""QP-SNN study on Fashion-MNIST (convnet, T = 4): bit-width x channel sparsity, vanilla vs ReScaW,
channel criteria, order of the phases, membrane quantization. Resumable: every finished cell is a JSON
file in ``--results``; a killed study re-run with the same command skips them, and the training phases
inside a cell resume from their last epoch (``train.fit``).

    OMP_NUM_THREADS=1 nohup .venv/bin/python benchmarks/qpsnn/study.py > runs/qpsnn/study.log 2>&1 &
    .venv/bin/python benchmarks/qpsnn/study.py --list          # the cells, in the order they run

Every cell starts from the same dense checkpoint (``--dense``: the shared convnet run, width 1.0, T = 4,
seed 0, copied after its 7th of 10 epochs because the machine was too loaded to wait; see RESULTS.md).
QP-SNN order (default): quantize + BatchNorm re-estimation -> QAT for ``--qat-epochs`` (shared by all
cells with the same scale and bits) -> channel scores on 16 training batches of 128 -> physical removal
+ BatchNorm re-estimation -> fine-tuning ``--ft-epochs`` at the same bit-width. An "epoch" is
``--train-limit`` (20000) training images, lr ``--lr`` (0.01, SGD as in training). Float controls
(bits 32) get the same number of epochs. Recorded per cell: accuracy after QAT and right after removal
(first 2000 test images), final accuracy (all 10000); bit-width utilisation; size, FLOPs, SOPs,
energy (spikeprune.compression.cost on 4 test batches of 256); latency of the compressed and the dense model,
measured alternately in the same process (batch 256, 1 thread).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from spikeprune.compression.compress import save_compressed  # noqa: E402
from spikeprune.engine.config import TrainConfig  # noqa: E402
from spikeprune.compression.cost import cost_report, measure_latency  # noqa: E402
from spikeprune.engine.data import BatchLoader, load_dataset  # noqa: E402
from spikeprune.core.io import read_json, write_json  # noqa: E402
from spikeprune.compression.quant import freeze, quantize_model, reestimate_batchnorm, utilisation_report  # noqa: E402
from spikeprune.compression.structured import channel_groups, channel_scores, remove_channels, select_channels  # noqa: E402
from spikeprune.engine.train import evaluate, fit, load_model  # noqa: E402


def cell(bits, sparsity, criterion="svs", scale="mean", order="quantize-first", membrane_bits=None,
         ft_epochs=None, tag="grid", quantizer="spikeprune"):
    parts = [f"b{bits}", scale, f"s{int(round(sparsity * 100)):02d}", criterion]
    if quantizer != "spikeprune":  # issue 14: QP-SNN's reference quantizer (quant.PRESETS)
        parts.append(quantizer)
    if order != "quantize-first":
        parts.append(order)
    if membrane_bits:
        parts.append(f"m{membrane_bits}")
    if ft_epochs is not None:
        parts.append(f"ft{ft_epochs}")
    return {"id": "-".join(parts), "bits": bits, "sparsity": sparsity, "criterion": criterion, "scale": scale,
            "order": order, "membrane_bits": membrane_bits, "ft_epochs": ft_epochs, "tag": tag,
            "quantizer": quantizer}


def plan() -> list[dict]:
    """All cells, most important first (a study cut short still answers the main questions).

    Quantized cells get qat_epochs + ft_epochs of training after the dense checkpoint; the float
    controls (bits 32) get the same number of epochs, all as fine-tuning, so every accuracy is compared
    with a dense model trained exactly as long (``b32-mean-s00-svs-ft4``).
    """
    cells = [cell(4, 0.5)]  # the target: 4-bit ReScaW + 50 % of channels removed by SVS
    cells.append(cell(32, 0.0, ft_epochs=4, tag="dense-control"))  # dense fp32, trained as long
    # Issue 14: the 4-bit + 50 % cells with QP-SNN's reference quantizer (gamma per output channel,
    # straight-through gradient, first/last layers in float), ReScaW (mean) vs vanilla (max) scale.
    cells += [cell(4, 0.5, scale=sc, quantizer="qpsnn", tag="reference-quantizer") for sc in ("mean", "max")]
    cells += [cell(4, 0.5, "l1", tag="criteria"), cell(4, 0.5, "sf", tag="criteria")]
    cells.append(cell(4, 0.5, ft_epochs=10, tag="longer-ft"))
    for bits in (4, 8, 2):  # vanilla vs ReScaW: accuracy and utilisation right after QAT (no fine-tuning)
        for scale in ("mean", "max"):
            cells.append(cell(bits, 0.0, scale=scale, ft_epochs=0, tag="qat-only"))
    # Session 2 order (0.4 of a core left): vanilla QAT beat ReScaW on this model, so the vanilla target
    # cell and the float-pruning control (is the loss from pruning or from quantization?) come first,
    # then the sparsity sweep at 4 bits, then 50 % at 8 and 2 bits in both scales.
    cells.append(cell(4, 0.5, scale="max", tag="vanilla"))
    cells.append(cell(32, 0.5, ft_epochs=4, tag="fp32-prune"))  # channel pruning alone, float weights
    cells += [cell(4, s) for s in (0.3, 0.7)]  # the main grid: ReScaW + SVS, QP-SNN order
    cells += [cell(8, 0.5), cell(2, 0.5)]
    cells += [cell(8, 0.5, scale="max", tag="vanilla"), cell(2, 0.5, scale="max", tag="vanilla")]
    cells += [cell(4, s, scale="max", tag="vanilla") for s in (0.3, 0.7)]
    cells.append(cell(4, 0.5, order="prune-first", tag="order"))
    cells += [cell(4, s, crit, tag="criteria") for crit in ("l1", "sf") for s in (0.3, 0.7)]
    cells += [cell(8, s) for s in (0.3, 0.7)]
    cells += [cell(2, s) for s in (0.3, 0.7)]
    cells += [cell(4, 0.5, crit, tag="criteria") for crit in ("bn", "membrane", "random")]
    cells.append(cell(4, 0.5, membrane_bits=8, tag="membrane"))
    cells += [cell(b, 0.0) for b in (4, 8, 2)]  # full-width fine-tuning at each bit-width: the slowest cells
    return cells


LIMIT: int | None = None  # --limit: a smoke test on the first N train/test images
TRAIN_LIMIT: int | None = None  # --train-limit: images per training epoch
MONITOR = 2000  # test images for the per-epoch and right-after-removal accuracies (final: all 10k)


def train_cfg(epochs: int, lr: float) -> TrainConfig:
    return TrainConfig(model="convnet", dataset="fashion_mnist", width=1.0, timesteps=4, epochs=epochs, lr=lr,
                       train_limit=LIMIT or TRAIN_LIMIT, test_limit=LIMIT or MONITOR)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Study:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.results = Path(args.results)
        self.dataset = load_dataset("fashion_mnist")
        self.dense, _ = load_model(args.dense)
        self.calib = [b for _, b in zip(range(16), BatchLoader(self.dataset, "train", 128, shuffle=True, seed=0,
                                                                 timesteps=4, augment=False))]
        self.test = BatchLoader(self.dataset, "test", 256, shuffle=False, seed=0, timesteps=4, limit=LIMIT)
        self.monitor = BatchLoader(self.dataset, "test", 256, shuffle=False, seed=0, timesteps=4,
                                   limit=LIMIT or MONITOR)
        self.cost_batches = [b for _, b in zip(range(4), self.test)]
        self.example = self.calib[0][0]
        info = self.results / "dense.json"
        if info.exists():
            self.dense_info = read_json(info)
        else:
            ev = evaluate(self.dense, self.test)
            rep = cost_report(self.dense, self.cost_batches)
            self.dense_info = {"test_accuracy": ev["test_accuracy"], "firing_rate": ev["firing_rate"], **rep.totals,
                               "checkpoint": str(args.dense)}
            write_json(info, self.dense_info)
        log(f"dense: accuracy {self.dense_info['test_accuracy']:.4f}")

    def quantized(self, model, c):
        if c["bits"] >= 32:
            return model
        from spikeprune.compression.quant import PRESETS

        ref = PRESETS["qpsnn"] if c.get("quantizer", "spikeprune") == "qpsnn" else PRESETS["spikeprune"]
        quantize_model(model, c["bits"], method=c["scale"], membrane_bits=c["membrane_bits"],
                       example_input=self.example, per_channel=ref["per_channel"],
                       gradient=ref["gradient"], first_last=ref["first_last"])
        reestimate_batchnorm(model, self.calib)  # as spikeprune.compression.compress does
        return model

    def qat(self, c) -> tuple[torch.nn.Module, dict]:
        """The QAT model of (scale, bits, membrane bits), trained once and shared by the cells."""
        key = f"qat-{c['scale']}-b{c['bits']}" + (f"-m{c['membrane_bits']}" if c["membrane_bits"] else "")
        if c.get("quantizer", "spikeprune") != "spikeprune":
            key += f"-{c['quantizer']}"
        run = self.out / key
        model = self.quantized(copy.deepcopy(self.dense), c)
        if c["bits"] >= 32:
            return model, {"test_accuracy": self.dense_info["test_accuracy"], "utilisation": None}
        result = fit(train_cfg(self.args.qat_epochs, self.args.lr), run, resume=True, dataset=self.dataset,
                     model=model, progress=False, log=log)
        info = {"test_accuracy": result.metrics["test_accuracy"], "seconds": result.metrics["seconds"],
                "utilisation": utilisation_report(result.model)}
        return result.model, info

    def run_cell(self, c) -> dict:
        tick = time.perf_counter()
        ft_epochs = self.args.ft_epochs if c["ft_epochs"] is None else c["ft_epochs"]
        cell_dir = self.out / "cells" / c["id"]
        calib = self.calib
        if c["order"] == "quantize-first":
            model, qinfo = self.qat(c)
            model = copy.deepcopy(model)
        else:  # prune the dense float model, fine-tune in float, then QAT
            model, qinfo = copy.deepcopy(self.dense), {"test_accuracy": None, "utilisation": None}
        groups = channel_groups(model)
        before = {g.name: g.size for g in groups}
        if c["sparsity"] > 0:
            scores = channel_scores(c["criterion"], model, calib, groups=groups)
            history = remove_channels(model, select_channels(scores, c["sparsity"]))
            reestimate_batchnorm(model, calib)
        else:
            history = {}
        pruned_acc = evaluate(model, self.monitor)["test_accuracy"]  # first 2000 test images
        log(f"{c['id']}: removed channels, accuracy before fine-tuning {pruned_acc:.4f}")
        if ft_epochs > 0:
            result = fit(train_cfg(ft_epochs, self.args.lr), cell_dir / "finetune", resume=True,
                         dataset=self.dataset, model=model, progress=False, log=log)
            model = result.model
        if c["order"] != "quantize-first":
            model = self.quantized(model, c)
            result = fit(train_cfg(self.args.qat_epochs, self.args.lr), cell_dir / "qat", resume=True,
                         dataset=self.dataset, model=model, progress=False, log=log)
            model = result.model
        util = utilisation_report(model) if c["bits"] < 32 else None
        freeze(model)
        save_compressed(cell_dir / "model.safetensors", model, {"channel_history": [history], "cell": c})
        ev = evaluate(model, self.test)
        rep = cost_report(model, self.cost_batches)
        x = self.cost_batches[0][0]
        dense_ms, comp_ms = [], []
        for _ in range(2):  # alternate so load drift hits both alike
            dense_ms.append(measure_latency(self.dense, x, repeats=3)["median_ms"])
            comp_ms.append(measure_latency(model, x, repeats=3)["median_ms"])
        t, d = rep.totals, self.dense_info
        return {
            **c, "ft_epochs": ft_epochs, "qat_epochs": self.args.qat_epochs if c["bits"] < 32 else 0,
            "lr": self.args.lr, "train_limit": TRAIN_LIMIT, "monitor_test_images": MONITOR,
            "dense_accuracy": d["test_accuracy"], "qat_accuracy": qinfo["test_accuracy"],
            "pruned_accuracy": pruned_acc, "test_accuracy": ev["test_accuracy"],
            "accuracy_drop_pts": 100 * (d["test_accuracy"] - ev["test_accuracy"]), "firing_rate": ev["firing_rate"],
            "channels_before": before, "channels_after": {g.name: g.size for g in channel_groups(model)},
            "params": t["params"], "size_bytes": t["size_dense_bytes"], "size_sparse_bytes": t["size_sparse_bytes"],
            "size_reduction": d["size_dense_bytes"] / t["size_dense_bytes"],
            "dense_ops": t["dense_ops"], "flop_reduction": d["dense_ops"] / t["dense_ops"],
            "sops": t["sops"], "sops_measured": t["sops_measured"], "macs": t["macs"], "energy_uj": t["energy_uj"],
            "energy_reduction": d["energy_pj"] / t["energy_pj"],
            "latency_ms": min(comp_ms), "dense_latency_ms": min(dense_ms), "speedup": min(dense_ms) / min(comp_ms),
            "qat_utilisation": qinfo["utilisation"][-1] if qinfo["utilisation"] else None,
            "utilisation": util[-1] if util else None, "utilisation_layers": util,
            "seconds": time.perf_counter() - tick,
        }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dense", default=str(ROOT / "runs" / "qpsnn" / "dense_e7" / "checkpoint.safetensors"),
                   help="dense checkpoint (default: a copy of the shared run after epoch 7, see RESULTS.md)")
    p.add_argument("--train-limit", type=int, default=20000, help="images per QAT / fine-tuning epoch")
    p.add_argument("--out", default=str(ROOT / "runs" / "qpsnn"))
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "qpsnn" / "results"))
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--ft-epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--only", nargs="*", help="cell ids or tags to run")
    p.add_argument("--list", action="store_true")
    p.add_argument("--limit", type=int, help="smoke test: only the first N train and test images")
    args = p.parse_args()
    global LIMIT, TRAIN_LIMIT
    LIMIT, TRAIN_LIMIT = args.limit, args.train_limit
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cells = plan()
    if args.only:
        cells = [c for c in cells if c["id"] in args.only or c["tag"] in args.only]
    if args.list:
        for c in cells:
            print(c["id"], c["tag"])
        return 0
    study = Study(args)
    for c in cells:
        path = Path(args.results) / f"{c['id']}.json"
        if path.exists():
            log(f"{c['id']}: done already")
            continue
        log(f"{c['id']}: start")
        row = study.run_cell(c)
        write_json(path, row)
        log(f"{c['id']}: accuracy {row['test_accuracy']:.4f} (dense {row['dense_accuracy']:.4f}), "
            f"{row['size_reduction']:.1f}x smaller, {row['flop_reduction']:.2f}x fewer ops, "
            f"speed-up {row['speedup']:.2f}x, {row['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
