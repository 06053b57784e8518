"""``spikeprune export``: write a (compressed) checkpoint in a format other tool chains load.

``--format nir``: the Neuromorphic Intermediate Representation (HDF5), for neuromorphic hardware and
simulators; masked, channel-pruned and quantized networks export their effective weights, BatchNorm is
folded into the layer before it. Needs ``pip install 'spikeprune[nir]'``; mapping in docs/interop.md.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to NIR (neuromorphic tool chains)", description=__doc__)
    p.add_argument("--format", default="nir", choices=["nir"], help="output format (default: nir)")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a spikeprune .safetensors checkpoint")
    p.add_argument("--mask", metavar="FILE", help="an unstructured mask (.safetensors) to apply first")
    p.add_argument("--dt", type=float, default=1e-4, help="time step (s) NIR's time constants refer to "
                   "(default 1e-4, SpikingJelly's NIR default)")
    p.add_argument("--out", required=True, metavar="FILE.nir", help="file to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..interop.nir_export import export_checkpoint

    summary = export_checkpoint(args.checkpoint, args.out, format=args.format, mask=args.mask, dt=args.dt)
    print(f"wrote {summary['out']}: {len(summary['nodes'])} NIR nodes, {summary['nonzero']}/{summary['weights']} "
          f"non-zero weights, T={summary['timesteps']}, dt={summary['dt']:g}")
    return 0
