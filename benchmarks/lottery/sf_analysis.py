"""Why does (or doesn't) SF beat magnitude? Two cheap measurements on a trained Fashion-MNIST convnet.

1. Gaussian vs empirical density of the membrane potential at the threshold, per channel of every
   LIF layer: the SF criterion (LTH-SNN Eq. 12) assumes u ~ N(mu, var) and uses N(0 | mu - u_th, var);
   calibration also measures the density directly (fraction of u_t within +-eps of u_th, / 2 eps).
   Reported: rank correlation across channels, ratio quantiles, and a plot of u histograms.
2. One-shot pruning (no retraining) of the same network with magnitude, sf, sf-empirical and
   sf-current at several sparsities, (a) with the per-layer counts fixed to global magnitude's
   ("budget": isolates *which* weights inside a layer) and (b) with max-normalised global ranking.

    python benchmarks/lottery/sf_analysis.py --checkpoint runs/fmnist/checkpoint.safetensors
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from scipy import stats as sstats

from spikeprune.tickets.calibration import calibrate
from spikeprune.tickets.criteria import gaussian_density_at_threshold
from spikeprune.engine.data import BatchLoader, load_dataset, split_validation
from spikeprune.core.io import atomic_path, write_json
from spikeprune.tickets.masks import Mask
from spikeprune.engine.neuron import observe
from spikeprune.tickets.pruning import prune
from spikeprune.engine.train import evaluate, load_model

HERE = Path(__file__).resolve().parent


def density_comparison(model, calib, loader, dest: Path) -> dict:
    out = {}
    for name, st in calib.neurons.items():
        lif = calib.modules[name]
        gauss = gaussian_density_at_threshold(st.membrane_mean, st.membrane_var, lif.u_th).double()
        emp = calib.threshold_density[name].double()
        rho = sstats.spearmanr(gauss.numpy(), emp.numpy()).statistic
        ratio = (gauss / emp.clamp_min(1e-9)).numpy()
        out[name] = {"channels": int(gauss.numel()), "spearman": float(rho),
                     "gaussian_mean": float(gauss.mean()), "empirical_mean": float(emp.mean()),
                     "ratio_quantiles_10_50_90": [float(x) for x in torch.tensor(ratio).quantile(
                         torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()],
                     "firing_rate": float(st.mean_firing_rate)}
        print(f"  {name:14s} C={gauss.numel():3d}  spearman {rho:+.3f}  mean density gaussian "
              f"{gauss.mean():.3f} empirical {emp.mean():.3f}  ratio q10/50/90 "
              + " / ".join(f"{x:.2f}" for x in out[name]["ratio_quantiles_10_50_90"]), flush=True)
    # histograms of u for 3 channels of each layer against their Gaussian fit
    samples: dict[str, torch.Tensor] = {}

    def grab(lif, u, s):
        n = [k for k, m in calib.modules.items() if m is lif][0]
        if n not in samples:
            samples[n] = u.detach()[:, :, :3].transpose(0, 2).reshape(3, -1)

    with torch.no_grad(), observe(model, grab):
        model.eval()
        model(next(iter(loader))[0])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(samples)
    fig, axes = plt.subplots(len(layers), 3, figsize=(10, 2.6 * len(layers)), dpi=110)
    for r, name in enumerate(layers):
        st, lif = calib.neurons[name], calib.modules[name]
        for c in range(3):
            ax = axes[r][c]
            u = samples[name][c].float()
            ax.hist(u.numpy(), bins=120, density=True, color="0.6")
            mu, var = float(st.membrane_mean[c]), float(st.membrane_var[c])
            xs = torch.linspace(float(u.min()), float(u.max()), 300)
            ax.plot(xs, torch.exp(-(xs - mu) ** 2 / (2 * var)) / (2 * torch.pi * var) ** 0.5, "b-", lw=1,
                    label="Gaussian fit")
            ax.axvline(lif.u_th, color="r", lw=1, label="u_th")
            ax.set_title(f"{name} ch {c}: gauss@u_th {float(gaussian_density_at_threshold(st.membrane_mean[c:c+1], st.membrane_var[c:c+1], lif.u_th)):.3f}, "
                         f"emp {float(calib.threshold_density[name][c]):.3f}", fontsize=7)
            ax.tick_params(labelsize=6)
            if r == 0 and c == 0:
                ax.legend(fontsize=6)
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


def one_shot(model, calib, test, sparsities) -> dict:
    results = {}
    for normalize in ("budget", "max"):
        for criterion in ("magnitude", "sf", "sf-empirical", "sf-current"):
            accs = []
            for s in sparsities:
                net = copy.deepcopy(model)
                prune(net, criterion, s, calibration=calib, normalize=normalize, mask=Mask.ones(net))
                accs.append(evaluate(net, test)["test_accuracy"])
            results[f"{criterion} / {normalize}"] = accs
            print(f"  {criterion:13s} {normalize:7s} " + "  ".join(f"{100 * a:5.1f}" for a in accs), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--test-limit", type=int, default=3000,
                        help="with --select-on test only (the pre-issue-14 protocol); validation uses all its samples")
    parser.add_argument("--select-on", choices=("val", "test"), default="val",
                        help="which split the one-shot accuracies are measured on (issue 14: criterion choices "
                             "are made on validation; needs a checkpoint trained with the validation split)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9])
    parser.add_argument("--out", default=str(HERE / "sf_analysis.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, meta = load_model(args.checkpoint)
    dataset = load_dataset("fashion_mnist")
    T = model.spikeprune_config["T"]
    vcfg = meta.get("config", {})
    fit_set, val_set, split = split_validation(dataset, vcfg.get("val_fraction", 0.1), vcfg.get("val_seed", 0))
    if args.select_on == "val" and "validation" not in meta:
        raise SystemExit(f"{args.checkpoint} was trained on the whole training set: its 'validation' samples are "
                         "training samples; train with the validation split first (or pass --select-on test)")
    train = BatchLoader(fit_set, "train", 128, shuffle=True, seed=0, timesteps=T, augment=False)
    test = (BatchLoader(val_set, "test", 500, shuffle=False, timesteps=T) if args.select_on == "val" else
            BatchLoader(dataset, "test", 500, shuffle=False, timesteps=T, limit=args.test_limit))
    calib = calibrate(model, train, 8)
    print(f"dense accuracy on {test.num_samples} {args.select_on} images: {evaluate(model, test)['test_accuracy']:.4f}")
    print("1. membrane-potential density at u_th, Gaussian fit vs measured (eps = 0.05):")
    dens = density_comparison(model, calib, train, HERE / "sf_density.png")
    print(f"2. one-shot pruning, no retraining (accuracy % at sparsity {args.sparsities}):")
    shot = one_shot(model, calib, test, args.sparsities)
    write_json(args.out, {"checkpoint": args.checkpoint, "epoch": meta.get("epoch"), "measured_on": args.select_on, "validation": split,
                          "samples": test.num_samples,
                          "density": dens, "sparsities": args.sparsities, "one_shot": shot})


if __name__ == "__main__":
    main()
