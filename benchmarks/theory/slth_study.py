"""Study (a) of docs/theory.md: the strong-LTH construction on a grid, against LTH-SNN's formulas.

    OMP_NUM_THREADS=1 python benchmarks/theory/slth_study.py run        # resumable: skips finished configs
    python benchmarks/theory/slth_study.py report                       # tables + plots from the JSON files

Grid (construction regime): N in {4, 8, 16, 32}, L in {1, 2, 3}, T in {1, 4, 8}, eps in {0.05, 0.1, 0.2};
60 random large networks per config for the success rate, 8 of them built at every k of the grid and
run on 256 input spike trains for output equality. The ReLU comparison runs on the L = 1, T = 1 configs.

Theorem regime: for each (N, L, T), eps_thm = delta / (2 N C L T) with delta = 0.5, i.e. the flip term
N C L T eps of Theorem 4.3 takes half of delta, so the width bound is defined; run where the bound's k
fits (k_proof <= 4e6), otherwise only the bound is recorded.

Every config writes results/slth/<name>.json; `report` rebuilds slth_grid.csv, slth_theorem.csv,
slth_relu.csv and the PNGs from them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from pathlib import Path

import torch

from spikeprune.core.io import write_json, write_text
from spikeprune.theory.slth import (
    random_spikes,
    random_target,
    run_target,
    target_p_sup,
    width_bound,
)
from spikeprune.theory.slth_experiment import slth_experiment

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "slth"
NS, LS, TS, EPSS = (4, 8, 16, 32), (1, 2, 3), (1, 4, 8), (0.2, 0.1, 0.05)
TRIALS, EQ_TRIALS, SAMPLES, SEED = 60, 8, 256, 0
DELTA_THM, K_PROOF_CAP = 0.5, 4_000_000
THM_FRACTIONS = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 0.6, 1.0)  # of the bound's k (proof form)
BETA, U_TH, RATE = 0.5, 0.2, 0.3


def name(N, L, T, eps):
    return f"N{N}_L{L}_T{T}_eps{eps:g}"


def run() -> None:
    torch.set_num_threads(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    configs = [(N, L, T, eps) for N in NS for L in LS for T in TS for eps in EPSS]
    for N, L, T, eps in configs:
        path = RESULTS / f"{name(N, L, T, eps)}.json"
        if path.exists():
            continue
        start = time.perf_counter()
        result = slth_experiment(N, L, T, eps, trials=TRIALS, equality_trials=EQ_TRIALS, samples=SAMPLES,
                                 seed=SEED, beta=BETA, u_th=U_TH, rate=RATE, compare_relu=(L == 1 and T == 1))
        result["seconds"] = time.perf_counter() - start
        write_json(path, result)
        print(f"{path.name}: {result['seconds']:.1f} s", flush=True)
    for N in NS:
        for L in LS:
            for T in TS:
                path = RESULTS / f"thm_{name(N, L, T, 0)[:-5]}.json"
                if path.exists():
                    continue
                target = random_target(N, L, beta=BETA, u_th=U_TH, seed=SEED)
                ref = run_target(target, random_spikes(T, SAMPLES, N, RATE, seed=SEED))
                p0 = target_p_sup(target, ref, 0.0)
                C0 = 2 * p0 / (1 - BETA)
                eps = DELTA_THM / (2 * N * C0 * L * T)
                record = {"N": N, "L": L, "T": T, "eps": eps, "delta": DELTA_THM, "p_sup_at_u_th": p0}
                try:
                    record["k_proof"] = width_bound(N, L, T, eps, DELTA_THM, U_TH, C0, form="proof")
                    record["k_paper"] = width_bound(N, L, T, eps, DELTA_THM, U_TH, C0, form="paper")
                except ValueError as e:
                    record["error"] = str(e)
                if "k_proof" in record and record["k_proof"] <= K_PROOF_CAP:
                    start = time.perf_counter()
                    kp = record["k_proof"]
                    ks = sorted({max(N, int(round(kp * f / N)) * N) for f in THM_FRACTIONS})
                    record["experiment"] = slth_experiment(N, L, T, eps, ks=ks, trials=40, equality_trials=8,
                                                           samples=SAMPLES, seed=SEED, beta=BETA, u_th=U_TH,
                                                           rate=RATE, delta=DELTA_THM)
                    record["seconds"] = time.perf_counter() - start
                write_json(path, record)
                print(f"{path.name}: {record.get('seconds', 0):.1f} s", flush=True)


# ---------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in r.items()})
    return buf.getvalue()


def _save(fig, path: Path) -> None:
    from matplotlib.ticker import NullFormatter

    from spikeprune.core.io import atomic_path

    for ax in fig.axes:  # log axes: label the decades only
        if ax.get_xscale() == "log":
            ax.xaxis.set_minor_formatter(NullFormatter())

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


_K_EXACT: dict = {}


def _k_exact(c: dict, level: float) -> int:
    """Smallest k (multiple of N) whose exact construction success probability is >= level."""
    from spikeprune.theory.slth import construction_success_probability

    key = (c["N"], c["L"], c["eps"], level)
    if key not in _K_EXACT:
        target = random_target(c["N"], c["L"], beta=c["beta"], u_th=c["u_th"], seed=c["seed"])
        lo, hi = 1, 1
        while construction_success_probability(target, hi * c["N"], c["eps"]) < level:
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if construction_success_probability(target, mid * c["N"], c["eps"]) < level else (lo, mid)
        _K_EXACT[key] = hi * c["N"]
    return _K_EXACT[key]


def _theorem_results() -> list[dict]:
    """The theorem-regime result files in numeric (N, L, T) order."""
    ts = [json.loads(p.read_text()) for p in RESULTS.glob("thm_*.json")]
    return sorted(ts, key=lambda t: (t["N"], t["L"], t["T"]))


def report() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from scipy.stats import binomtest

    results = {}
    for p in RESULTS.glob("N*.json"):
        results[p.stem] = json.loads(p.read_text())
    # Numeric order (N, L, T, then eps descending), not the file names' string order.
    results = dict(sorted(results.items(), key=lambda kv: (kv[1]["config"]["N"], kv[1]["config"]["L"],
                                                           kv[1]["config"]["T"], -kv[1]["config"]["eps"])))
    grid_rows = []
    for key, r in results.items():
        c, b, rows = r["config"], r["bounds"], r["rows"]
        km = [k for k in r["k_min"] if k is not None]
        grid_rows.append({
            "N": c["N"], "L": c["L"], "T": c["T"], "eps": c["eps"], "C": b["C"],
            "target_rate_last": r["target_firing_rates"][-1],
            "k_min_median": float(np.median(km)) if km else None, "found": len(km),
            "k_success_90": b["k_success"], "k_exact_90": _k_exact(c, 1 - b["delta"]),
            "k_union_bound_90": b["k_construction"],
            "ratio_union_vs_measured": b["ratio_construction"],
            "ratio_union_vs_exact": b["k_construction"] / _k_exact(c, 1 - b["delta"]),
            "max_abs_err_exact_vs_measured": max(abs(x["success_rate"] - x["success_exact"]) for x in rows),
            # Smallest two-sided exact binomial p-value of "measured successes ~ Bin(trials, exact)" over k.
            "min_p_exact": min(binomtest(round(x["success_rate"] * c["trials"]), c["trials"],
                                         min(max(x["success_exact"], 1e-12), 1 - 1e-12)).pvalue for x in rows),
            # The bound is a lower bound: one-sided test "measured below it", smallest p over k.
            "min_p_below_union_bound": min(binomtest(round(x["success_rate"] * c["trials"]), c["trials"],
                                                     min(max(x["success_bound"], 1e-12), 1 - 1e-12),
                                                     alternative="less").pvalue for x in rows),
            "flip_term_NCLTeps": b["flip_term"],
            "output_equal_at_k_max": rows[-1]["output_equal_rate"],
            "output_equal_at_k_success": next((x["output_equal_rate"] for x in rows if b["k_success"]
                                               and x["k"] >= b["k_success"]), None),
            "violations": sum(r["violations"].values()),
            "seconds": r.get("seconds"),
        })
    write_text(HERE / "slth_grid.csv", _csv(grid_rows))

    relu_rows = []
    for key, r in results.items():
        res = r["resources"]
        if "relu" not in res or res["relu"] is None:
            continue
        c = r["config"]
        relu_rows.append({
            "N": c["N"], "eps": c["eps"],
            "snn_k_min_median": res["snn"]["k_min_median"], "relu_k_min_median": res["relu"]["k_min_median"],
            "relu_nonneg_k_min_median": res["relu-nonneg"]["k_min_median"],
            "snn_neurons_per_weight": res["snn"]["virtual_neurons_per_weight"],
            "relu_neurons_per_weight": res["relu"]["virtual_neurons_per_weight"],
            "relu_nonneg_neurons_per_weight": res["relu-nonneg"]["virtual_neurons_per_weight"],
            "snn_nonzero_per_weight": res["snn"]["nonzero_weights_per_weight"],
            "relu_nonzero_per_weight": res["relu"]["nonzero_weights_per_weight"],
            "relu_nonneg_nonzero_per_weight": res["relu-nonneg"]["nonzero_weights_per_weight"],
        })
    if relu_rows:
        write_text(HERE / "slth_relu.csv", _csv(relu_rows))

    thm_rows = []
    for t in _theorem_results():
        row = {"N": t["N"], "L": t["L"], "T": t["T"], "eps": t["eps"], "delta": t["delta"],
               "k_proof": t.get("k_proof"), "k_paper": t.get("k_paper"), "ran": "experiment" in t}
        if "experiment" in t:
            e = t["experiment"]
            b = e["bounds"]
            row.update({"C": b["C"], "flip_term": b["flip_term"], "k_success": b["k_success"],
                        "k_equality": b["k_equality"], "ratio_proof_vs_success": b["ratio_proof_vs_success"],
                        "ratio_paper_vs_success": b["ratio_paper_vs_success"],
                        "ratio_proof_vs_equality": b["ratio_proof_vs_equality"],
                        "k_equality_99": next((x["k"] for x in e["rows"] if x["output_equal_rate"] >= 0.99), None),
                        "equal_at_k_proof": e["rows"][-1]["output_equal_rate"],
                        "one_minus_delta_at_k_proof": e["rows"][-1]["theorem_1_minus_delta"],
                        "theorem_holds": all(x["output_equal_rate"] >= x["theorem_1_minus_delta"] for x in e["rows"]),
                        "violations": sum(e["violations"].values())})
        thm_rows.append(row)
    if thm_rows:
        keys = list(dict.fromkeys(k for r in thm_rows for k in r))
        write_text(HERE / "slth_theorem.csv", _csv([{k: r.get(k) for k in keys} for r in thm_rows]))

    # Figure 1: success rate vs k (T = 1; T does not change the construction), measured vs exact vs union
    # bound, one panel per (L, N).
    fig, axes = plt.subplots(len(LS), len(NS), figsize=(3.3 * len(NS), 2.7 * len(LS)), squeeze=False)
    for li, L in enumerate(LS):
        for ax, N in zip(axes[li], NS):
            for ci, eps in enumerate(EPSS):
                r = results.get(name(N, L, 1, eps))
                if not r:
                    continue
                k = [x["k"] for x in r["rows"]]
                ax.plot(k, [x["success_rate"] for x in r["rows"]], f"C{ci}o", ms=4, label=f"measured, ε={eps:g}")
                ax.plot(k, [x["success_exact"] for x in r["rows"]], f"C{ci}-", lw=1)
                ax.plot(k, [x["success_bound"] for x in r["rows"]], f"C{ci}:", lw=1.2)
            ax.set_xscale("log")
            ax.set_title(f"N = {N}, L = {L}", fontsize=9)
            if li == len(LS) - 1:
                ax.set_xlabel("k (virtual neurons per layer)")
            ax.grid(True, which="both", alpha=0.3)
        axes[li][0].set_ylabel("P[construction succeeds]")
    axes[0][0].legend(fontsize=6, title="— exact, ··· 1-LN²exp(-(k/N)C_th ε/N)", title_fontsize=6)
    fig.tight_layout()
    _save(fig, HERE / "slth_success.png")
    plt.close(fig)

    # Figure 2: union-bound width (delta = 0.1) / exact 90 % width (lines) and / measured (markers).
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for ci, eps in enumerate(EPSS):
        for mi, L in enumerate(LS):
            sel = sorted((r["N"], r) for r in grid_rows if r["eps"] == eps and r["L"] == L and r["T"] == 1)
            if sel:
                ax.plot([n for n, _ in sel], [r["ratio_union_vs_exact"] for _, r in sel], color=f"C{ci}",
                        ls="-:"[0] if L == 1 else ("--" if L == 2 else ":"), label=f"ε={eps:g}, L={L}")
                ax.plot([n for n, _ in sel], [r["ratio_union_vs_measured"] for _, r in sel], color=f"C{ci}",
                        marker="os^"[mi], ls="none", ms=4)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N")
    ax.set_ylabel("k(union bound) / k(90 % success)")
    ax.set_title("lines: vs exact probability; markers: vs 60 measured networks", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    _save(fig, HERE / "slth_width_ratio.png")
    plt.close(fig)

    # Figure 3: output equality vs k across T (N = 8, eps = 0.1) — what the flip term costs.
    fig, axes = plt.subplots(1, len(LS), figsize=(3.4 * len(LS), 3.2), squeeze=False)
    for ax, L in zip(axes[0], LS):
        for ci, T in enumerate(TS):
            r = results.get(name(8, L, T, 0.1))
            if not r:
                continue
            k = [x["k"] for x in r["rows"]]
            ax.plot(k, [x["output_equal_rate"] for x in r["rows"]], f"C{ci}o-", ms=3, label=f"output equal, T={T}")
            ax.plot(k, [x["success_rate"] for x in r["rows"]], f"C{ci}:", lw=1)
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"N = 8, L = {L}, ε = 0.1 (1-δ(k) = 0)", fontsize=9)
        ax.set_xlabel("k")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("rate")
    axes[0][0].legend(fontsize=6, title="··· construction success", title_fontsize=6)
    fig.tight_layout()
    _save(fig, HERE / "slth_equality.png")
    plt.close(fig)

    # Figure 4: theorem regime: output equality vs 1 - delta(k) where the bound's k was run.
    ran = [t for t in _theorem_results() if "experiment" in t]
    if ran:
        cols = min(4, len(ran))
        rows_n = -(-len(ran) // cols)
        fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.8 * rows_n), squeeze=False)
        for ax, t in zip(axes.flat, ran):
            e = t["experiment"]
            k = [x["k"] for x in e["rows"]]
            ax.plot(k, [x["output_equal_rate"] for x in e["rows"]], "C3o-", ms=3, label="output equal")
            ax.plot(k, [x["success_rate"] for x in e["rows"]], "C0s:", ms=3, label="construction")
            ax.plot(k, [x["theorem_1_minus_delta"] for x in e["rows"]], "k--", label="1 - δ(k)")
            ax.axvline(t["k_proof"], color="C1", lw=0.8, label="k bound (proof)")
            ax.set_xscale("log")
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(f"N={t['N']} L={t['L']} T={t['T']} ε={t['eps']:.2g}", fontsize=8)
            ax.set_xlabel("k (virtual neurons per layer)", fontsize=7)
            ax.grid(True, which="both", alpha=0.3)
        for ax in list(axes.flat)[len(ran):]:
            ax.axis("off")
        axes[0][0].legend(fontsize=6)
        fig.tight_layout()
        _save(fig, HERE / "slth_theorem.png")
        plt.close(fig)

    # Figure 5: SNN vs ReLU constructions.
    if relu_rows:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.3))
        for ci, eps in enumerate(EPSS):
            pts = sorted((r["N"], r) for r in relu_rows if r["eps"] == eps)
            Ns = [n for n, _ in pts]
            a1.plot(Ns, [r["snn_k_min_median"] for _, r in pts], f"C{ci}o-", label=f"SNN, ε={eps:g}")
            a1.plot(Ns, [r["relu_k_min_median"] for _, r in pts], f"C{ci}s--", label=f"ReLU 2/weight, ε={eps:g}")
            a2.plot(Ns, [r["snn_nonzero_per_weight"] for _, r in pts], f"C{ci}o-")
            a2.plot(Ns, [r["relu_nonzero_per_weight"] for _, r in pts], f"C{ci}s--")
        for a in (a1, a2):
            a.set_xscale("log", base=2)
            a.set_xlabel("N")
            a.grid(True, which="both", alpha=0.3)
        a1.set_yscale("log")
        a1.set_ylabel("median smallest working k")
        a2.set_ylabel("non-zero weights per target weight")
        a1.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        _save(fig, HERE / "slth_relu.png")
        plt.close(fig)
    print(f"{len(results)} grid configs, {len(thm_rows)} theorem configs -> {HERE}")


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("run", "report"):
        sys.exit("usage: slth_study.py run|report")
    run() if sys.argv[1] == "run" else report()
