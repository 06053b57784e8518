"""Optional TensorBoard logging of a run's scalars (``--tensorboard``; ``pip install 'spikeprune[tensorboard]'``).

A run given ``tensorboard=True`` writes TensorBoard event files into ``<its run folder>/tensorboard/``, next
to the files they mirror: per epoch the numbers of ``history.csv`` (:func:`history_tag` names them:
``loss/train``, ``accuracy/val``, ``accuracy/test``, ``firing_rate``, ``lr``, ...), per lottery round the
numbers of ``rounds.csv`` (``lottery/...``, step = round). The folder sits inside the run folder, so
``tensorboard --logdir runs/`` finds every run (TensorBoard searches sub-folders) and a lottery's rounds
appear as ``dense/tensorboard``, ``round_01/tensorboard``, ...

A resumed run writes a new event file that starts with everything its files hold so far (the history of
the checkpoint, the finished rounds) and marks the earlier files' steps as superseded (``purge_step``:
TensorBoard then hides their events), so the log equals the files even when a run was killed between
writing an epoch and logging it. The event files are a view; the CSV/JSON files stay the record.

Only the main process writes (rank 0 under ``torchrun``: :func:`spikeprune.core.distributed.is_main`).
TensorBoard stores scalars as float32, so a logged value equals the file's value rounded to float32.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from spikeprune.core.diagnostics import UserError

__all__ = ["TENSORBOARD_DIR", "ScalarLog", "history_tag", "open_scalar_log", "require_tensorboard"]

#: the sub-folder of a run folder that holds its event files
TENSORBOARD_DIR = "tensorboard"

_SPLITS = ("train", "val", "test")


def require_tensorboard() -> None:
    """Raise a one-line :class:`UserError` when the ``tensorboard`` package is missing (call it before any work)."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install 'spikeprune[tensorboard]' "
                        "(or pip install tensorboard), or leave --tensorboard out") from None


def history_tag(column: str, prefix: str = "") -> str:
    """The TensorBoard tag of a result column: ``{split}_{name}`` -> ``{name}/{split}`` (so TensorBoard draws
    train, val and test of one quantity in one group), anything else unchanged; ``prefix`` goes in front."""
    split, _, name = column.partition("_")
    tag = f"{name}/{split}" if split in _SPLITS and name else column
    return f"{prefix}{tag}"


class ScalarLog:
    """A run's TensorBoard event files: ``add`` a row of numbers per step (epoch or round)."""

    def __init__(self, run_dir: str | Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(run_dir) / TENSORBOARD_DIR
        # purge_step: TensorBoard hides the events of earlier files at steps >= it (the new file re-logs them)
        self._writer = SummaryWriter(log_dir=str(self.path), purge_step=purge_step)

    def add(self, row: Mapping[str, Any], step: int, columns: Iterable[str], prefix: str = "") -> None:
        """Log ``row[c]`` for every column ``c`` that holds a finite number (``None`` -- e.g. no validation
        split -- is left out, not drawn as 0) at ``step``, and flush so a live TensorBoard shows it at once."""
        for c in columns:
            value = row.get(c)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            self._writer.add_scalar(history_tag(c, prefix), float(value), global_step=int(step))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def open_scalar_log(run_dir: str | Path, enabled: bool, *, purge_step: int | None = None) -> ScalarLog | None:
    """A :class:`ScalarLog` in ``run_dir/tensorboard`` when ``enabled`` and this is the main process, else ``None``.
    ``purge_step``: the first step the caller is about to (re-)log; earlier files' events from it on are hidden."""
    if not enabled:
        return None
    require_tensorboard()
    from spikeprune.core.distributed import is_main

    return ScalarLog(run_dir, purge_step) if is_main() else None
