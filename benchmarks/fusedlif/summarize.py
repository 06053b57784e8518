"""Summarise benchmarks/fusedlif/*.json + raw.md (written by run.sh) into the issue-19 table.

    python benchmarks/fusedlif/summarize.py

Step times: median and minimum over the interleaved rounds (the machine was shared, so the minimum is
the less load-distorted estimate; both are printed). Memory: from the raw*.md tables (engine_speed --memory).
"""
import json
import re
from pathlib import Path

HERE = Path(__file__).parent
ENG = ["spikeprune", "spikeprune-eager", "spikingjelly", "snntorch", "ann-x-T"]


def memory_tables():
    """(model, T) -> engine -> (rss_mb, saved_mb), from the markdown sections in file order."""
    out, key = {}, None
    lines = [l for f in sorted(HERE.glob("raw*.md")) for l in f.read_text().splitlines()]
    for line in lines:
        m = re.search(r"(convnet|vgg16) width .* T = (\d+),", line)
        if m:
            key = (m.group(1), int(m.group(2)))
            out[key] = {}
        m = re.match(r"\| (\S+) \| [\d.]+ \| .* \| ([\d.]+) / ([\d.]+) \|", line)
        if m and key:
            out[key][m.group(1)] = (float(m.group(2)), float(m.group(3)))
    return out


def main():
    mem = memory_tables()
    rows = ["| net | T | fused step ms (median / min) | eager | SpikingJelly | snnTorch | ANN x T "
            "| overhead over ANN x T, fused (median / min) | eager | fused / SpikingJelly (median / min) "
            "| peak RSS: fused / ANN x T | saved for backward: fused / ANN x T | fused / SpikingJelly (saved) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for net in ("convnet", "vgg16"):
        for T in (2, 4, 8):
            f = HERE / f"{net}_T{T}.json"
            if not f.exists():
                continue
            d = json.loads(f.read_text())
            med = {e: 1000 * d["median_s"][e] for e in ENG if e in d["median_s"]}
            mn = {e: 1000 * min(d["times_s"][e]) for e in ENG if e in d["times_s"]}
            m = mem.get((net, T), {})

            def cell(e):
                return f"{med[e]:.0f} / {mn[e]:.0f}" if e in med else "-"

            def ov(e):
                return f"{100 * (med[e] / med['ann-x-T'] - 1):+.0f} % / {100 * (mn[e] / mn['ann-x-T'] - 1):+.0f} %"

            rss = (f"{m['spikeprune'][0]:.0f} / {m['ann-x-T'][0]:.0f} MB = {m['spikeprune'][0] / m['ann-x-T'][0]:.2f}x"
                   if "spikeprune" in m and "ann-x-T" in m else "-")
            sav = (f"{m['spikeprune'][1]:.0f} / {m['ann-x-T'][1]:.0f} MB = {m['spikeprune'][1] / m['ann-x-T'][1]:.2f}x"
                   if "spikeprune" in m and "ann-x-T" in m else "-")
            sj = (f"{m['spikeprune'][1] / m['spikingjelly'][1]:.2f}x" if "spikeprune" in m and "spikingjelly" in m else "-")
            rows.append(f"| {net} | {T} | {cell('spikeprune')} | {cell('spikeprune-eager')} | {cell('spikingjelly')} "
                        f"| {cell('snntorch')} | {cell('ann-x-T')} | {ov('spikeprune')} | {ov('spikeprune-eager')} "
                        f"| {med['spikeprune'] / med['spikingjelly']:.2f}x / {mn['spikeprune'] / mn['spikingjelly']:.2f}x "
                        f"| {rss} | {sav} | {sj} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
