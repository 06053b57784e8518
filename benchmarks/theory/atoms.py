"""Point masses of the membrane potential near u_th, and where they break `P(crisis) <= 2 p_sup R`.

    OMP_NUM_THREADS=1 python benchmarks/theory/atoms.py CHECKPOINT EPS [--samples 512]

For every spiking layer and timestep of CHECKPOINT on the first test samples: the three largest
atoms (exact values shared by many neurons) within R = EPS/(1 - beta) of u_th, the measured crisis
mass P(|u - u_th| <= R) and Lemma 3.2's bound 2 p_sup R with the KDE p_sup (docs/theory.md §8).
A row marked VIOLATED is where Definition 3.1's finite-density assumption fails visibly.
"""

from __future__ import annotations

import argparse

import torch

from spikeprune.engine.data import BatchLoader, load_dataset
from spikeprune.theory.firing import crisis_probability, density_sup
from spikeprune.engine.neuron import observe, spiking_layers
from spikeprune.engine.train import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("eps", type=float)
    p.add_argument("--samples", type=int, default=512)
    args = p.parse_args()
    torch.set_num_threads(1)
    model, meta = load_model(args.checkpoint)
    model.eval()
    config = model.spikeprune_config
    dataset = load_dataset(meta["config"]["dataset"])
    loader = BatchLoader(dataset, "test", 128, shuffle=False, timesteps=config["T"], limit=args.samples)
    lifs = spiking_layers(model)
    names = {id(m): n for n, m in lifs.items()}
    us: dict[str, list[torch.Tensor]] = {n: [] for n in lifs}
    with torch.no_grad(), observe(model, lambda lif, u, s: us[names[id(lif)]].append(u)):
        for x, _ in loader:
            model(x)
    print(f"{'layer':<16} t {'R':>7} {'P(|u-u_th|<=R)':>15} {'2 p_sup R':>10}  largest atoms within R (value: mass)")
    for name, parts in us.items():
        lif = lifs[name]
        u = torch.cat(parts, dim=1)
        R = args.eps / (1 - lif.beta)
        for t in range(u.shape[0]):
            flat = u[t].reshape(-1).double()
            mass = crisis_probability(flat, lif.u_th, R)
            bound = 2 * density_sup(flat, lif.u_th, R, "kde") * R
            inside = flat[(flat - lif.u_th).abs() <= R]
            values, counts = torch.unique(inside, return_counts=True)
            top = counts.argsort(descending=True)[:3]
            atoms = ", ".join(f"{float(values[i]):.4f}: {float(counts[i]) / flat.numel():.4f}" for i in top
                              if counts[i] > 1)
            flag = "  VIOLATED" if mass > bound else ""
            print(f"{name:<16} {t + 1} {R:>7.4f} {mass:>15.4f} {bound:>10.4f}  {atoms}{flag}")


if __name__ == "__main__":
    main()
