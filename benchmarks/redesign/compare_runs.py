"""Compare every number two quickstart (or any) run folders wrote, wall-clock values aside.

Used for issue 17's "the quickstart prints the same numbers to the last digit": run the quickstart at the
commit before the redesign and at main, on the same machine and thread count, then

    python benchmarks/redesign/compare_runs.py OLD_OUT NEW_OUT

Every .csv / .json file present in both folders is read; each numeric value (JSON leaf or CSV cell) under
the same key is compared as text, i.e. to the last printed digit. Keys that hold a time, a path, a date, a
thread count or a version are skipped (they differ by nature). Exit code 1 if any number differs.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any, Iterator

SKIP = ("time", "seconds", "elapsed", "_s", "wall", "duration", "started", "finished", "date", "path", "out",
        "dir", "host", "version", "threads")


def _skipped(key: str) -> bool:
    return any(s in key.lower() for s in SKIP)


def _leaves(x: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, f"{prefix}/{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, x


def _values(f: Path) -> dict[str, Any]:
    if f.suffix == ".json":
        return dict(_leaves(json.loads(f.read_text())))
    with f.open(newline="") as fh:
        return {f"[{i}]/{k}": v for i, row in enumerate(csv.DictReader(fh)) for k, v in row.items()}


def _numeric(v: Any) -> bool:
    if isinstance(v, bool) or v is None:
        return False
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def main(old: Path, new: Path) -> int:
    compared = differ = files = 0
    one_side: list[str] = []
    for f in sorted(new.rglob("*")):
        g = old / f.relative_to(new)
        if f.suffix not in (".csv", ".json") or not g.is_file():
            continue
        files += 1
        a, b = _values(g), _values(f)
        one_side += [f"{f.relative_to(new)}:{k}" for k in sorted(a.keys() ^ b.keys())]
        for k in sorted(a.keys() & b.keys()):
            if _skipped(k.rsplit("/", 1)[-1]) or not _numeric(a[k]):
                continue
            compared += 1
            if str(a[k]) != str(b[k]):
                differ += 1
                print(f"DIFF {f.relative_to(new)} {k}: {a[k]} -> {b[k]}")
    print(f"{files} files, {compared} numbers compared, {differ} differ; {len(one_side)} keys in one run only")
    for k in one_side[:20]:
        print(f"  only in one run: {k}")
    return 1 if differ else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: compare_runs.py OLD_OUT NEW_OUT")
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
