"""``spikeprune export``: write a (compressed) checkpoint in a format other tool chains load.

``--format nir``: the Neuromorphic Intermediate Representation (HDF5), for neuromorphic hardware and
simulators; masked, channel-pruned and quantized networks export their effective weights, BatchNorm is
folded into the layer before it. Needs ``pip install 'spikeprune[nir]'``; mapping in docs/interop.md.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from spikeprune.core.config import CommandConfig, hparam, path_option
from spikeprune.cli.args import add_config_arguments, add_config_file_argument, config_from_args


@dataclass
class ExportConfig(CommandConfig):
    """What ``spikeprune export`` reads (flags and ``--config`` YAML keys)."""

    format: str = hparam("nir", "output format", ("nir",))
    checkpoint: str | None = path_option("a spikeprune .safetensors checkpoint", required=True)
    mask: str | None = path_option("an unstructured mask (.safetensors) to apply first")
    dt: float = hparam(1e-4, "time step (s) NIR's time constants refer to (SpikingJelly's NIR default)",
                       bounds="(0, inf)")
    out: str | None = path_option("file to write", required=True, metavar="FILE.nir")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to NIR (neuromorphic tool chains)", description=__doc__)
    add_config_file_argument(p)
    add_config_arguments(p, ExportConfig, title="settings")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spikeprune.interop.nir_export import export_checkpoint

    cfg = config_from_args(ExportConfig, args)
    summary = export_checkpoint(cfg.checkpoint, cfg.out, format=cfg.format, mask=cfg.mask, dt=cfg.dt)
    print(f"wrote {summary['out']}: {len(summary['nodes'])} NIR nodes, {summary['nonzero']}/{summary['weights']} "
          f"non-zero weights, T={summary['timesteps']}, dt={summary['dt']:g}")
    return 0
