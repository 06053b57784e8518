"""``spikeprune cost``: size, FLOPs, SOPs, energy and measured CPU latency of a checkpoint (docs/reports.md)."""

from __future__ import annotations

import argparse
from functools import partial
from dataclasses import dataclass

from spikeprune.core.config import CommandConfig, hparam, path_option
from spikeprune.core.rundir import holds_run_directory
from spikeprune.cli.args import add_config_file_argument, add_force_argument, add_config_arguments, config_from_args, out_path
from spikeprune.compression.cost import E_AC_PJ, E_MAC_PJ


@dataclass
class CostConfig(CommandConfig):
    """What ``spikeprune cost`` reads (flags and ``--config`` YAML keys)."""

    checkpoint: str | None = path_option("a spikeprune .safetensors checkpoint (dense, channel-pruned or "
                                         "quantized)", required=True)
    mask: str | None = path_option("an unstructured mask (.safetensors) to apply first")
    dataset: str | None = hparam(None, "dataset (default: the one the checkpoint was trained on)")
    data_dir: str | None = path_option("directory holding the dataset files", metavar="DIR")
    batches: int = hparam(4, "test batches for firing rates", bounds="[1, inf)")
    batch_size: int = hparam(256, "batch size", bounds="[1, inf)")
    bits: int | None = hparam(None, "stored weight bits of layers that are not quantized modules (default 32)",
                              bounds="[1, 32]")
    e_mac_pj: float = hparam(E_MAC_PJ, "energy per MAC in pJ", bounds="[0, inf)", flags=("--e-mac",), metavar="PJ")
    e_ac_pj: float = hparam(E_AC_PJ, "energy per accumulate in pJ", bounds="[0, inf)", flags=("--e-ac",), metavar="PJ")
    latency_repeats: int = hparam(5, "timed inference runs of each path (0: skip the latency measurements)",
                                  bounds="[0, inf)")
    threads: int = hparam(1, "CPU threads for the latency", bounds="[1, 4096]")
    event_engine: bool = hparam(True, "also time the event-driven engine (spikeprune.deploy.event_engine), "
                                "alternately with the dense path, and count its synaptic events")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cost", help="cost report of a checkpoint (size, SOPs, energy, latency)",
                       description=__doc__)
    add_config_file_argument(p)
    add_config_arguments(p, CostConfig, title="settings")
    p.add_argument("--out", metavar="DIR", type=out_path, help="also write cost.json there")
    add_force_argument(p, "a cost.json")
    p.set_defaults(func=run)


@holds_run_directory("cost")
def run(args: argparse.Namespace) -> int:
    from spikeprune.compression.compress import cost_of_checkpoint

    cfg = config_from_args(CostConfig, args)
    compile_event = None
    if cfg.event_engine:
        from spikeprune.deploy.event_engine import compile as compile_engine

        # quiet: where the engine cannot run, the table's "event engine: not timed (why)" is the one line
        compile_event = partial(compile_engine, quiet=True)
    report = cost_of_checkpoint(cfg.checkpoint, mask=cfg.mask, dataset=cfg.dataset, data_dir=cfg.data_dir,
                                batches=cfg.batches, batch_size=cfg.batch_size, bits=cfg.bits, e_mac_pj=cfg.e_mac_pj,
                                e_ac_pj=cfg.e_ac_pj, latency_repeats=cfg.latency_repeats, threads=cfg.threads,
                                out=args.out, event_engine=compile_event)
    print(report.table())
    return 0
