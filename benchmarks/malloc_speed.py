"""Train-step and inference time with glibc's default malloc vs spikeprune.engine.allocator.tune_malloc.

    python benchmarks/malloc_speed.py                  # convnet, Fashion-MNIST shapes, 3 alternations
    python benchmarks/malloc_speed.py --markdown benchmarks/RESULTS.md

The allocator setting is process-wide, so the two settings cannot share one process: this script
runs ``engine_speed.py`` in fresh processes, alternating system / tuned ``--alternations`` times (so
drift in machine load hits both alike), and reports the median over the alternations of each
process's median step time. Every process also measures ANN x T, so the LIF's overhead over the ANN
is a ratio measured side by side inside each process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--alternations", type=int, default=3)
    p.add_argument("--engines", default="spikeprune,ann-x-T")
    p.add_argument("--markdown", help="append a dated results section to this file")
    args, rest = p.parse_known_args(argv)
    runs: dict[str, list[dict]] = {"system": [], "tuned": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.alternations):
            for mode in ("system", "tuned"):
                out = Path(tmp) / f"{mode}-{i}.json"
                subprocess.run([sys.executable, str(HERE / "engine_speed.py"), "--malloc", mode, "--engines",
                                args.engines, "--json", str(out), *rest], check=True, stdout=subprocess.DEVNULL)
                runs[mode].append(json.loads(out.read_text()))
    engines = list(runs["system"][0]["median_s"])
    med = {m: {e: statistics.median(r["median_s"][e] for r in runs[m]) for e in engines} for m in runs}
    what = "inference forward" if "--inference" in rest else "train step"
    lines = [f"| engine | {what}, glibc default (ms) | tuned (ms) | speed-up |", "|---|---:|---:|---:|"]
    for e in engines:
        lines.append(f"| {e} | {1000 * med['system'][e]:.1f} | {1000 * med['tuned'][e]:.1f} | "
                     f"{med['system'][e] / med['tuned'][e]:.2f}x |")
    if "ann-x-T" in engines and "spikeprune" in engines:
        for m in ("system", "tuned"):
            over = [r["median_s"]["spikeprune"] / r["median_s"]["ann-x-T"] - 1 for r in runs[m]]
            lines.append(f"\nLIF overhead over ANN x T ({m}): {100 * statistics.median(over):.1f} % "
                         f"(per process: {', '.join(f'{100 * o:.1f}' for o in over)})")
    table = "\n".join(lines)
    cfg = runs["system"][0]["config"]
    header = (f"{cfg['model']} width {cfg['width']}, batch {cfg['batch_size']}, T = {cfg['timesteps']}; "
              f"{args.alternations} alternations x (system, tuned) processes, each {cfg['rounds']} rounds x "
              f"{cfg['steps']} steps; {runs['system'][0]['machine']}")
    print(header)
    print(table)
    if args.markdown:
        cmd = "python benchmarks/malloc_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
        with open(args.markdown, "a") as f:
            f.write(f"\n### Allocator, {what} ({dt.date.today().isoformat()})\n\nCommand: `{cmd.strip()}`  \n"
                    f"{header}.\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
