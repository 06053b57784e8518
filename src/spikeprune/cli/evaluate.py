"""``spikeprune evaluate``: accuracy and firing rates of a saved model on a dataset's test split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .args import add_run_arguments
from ..rundir import holds_run_directory


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a test set", description=__doc__)
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a spikeprune .safetensors checkpoint")
    p.add_argument("--dataset", help="dataset (default: the one the checkpoint was trained on)")
    p.add_argument("--data-dir", metavar="DIR", help="directory holding the dataset files")
    p.add_argument("--batch-size", type=int, default=256, metavar="N")
    p.add_argument("--encoding", choices=("direct", "poisson"), help="default: the checkpoint's")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed for Poisson encoding")
    p.add_argument("--mask", metavar="FILE", help="apply this mask (default: the mask a lottery checkpoint carries)")
    add_run_arguments(p, out_default=None, resume=False)
    p.set_defaults(func=run)


@holds_run_directory("evaluate")
def run(args: argparse.Namespace) -> int:
    from ..data import BatchLoader
    from ..io import check_writable_dir, load_checkpoint, write_json
    from ..masks import Mask, stored_mask
    from ..train import checkpoint_dataset, evaluate, load_model

    if args.batch_size < 1:
        raise ValueError(f"batch size must be >= 1; got {args.batch_size}")
    out = check_writable_dir(args.out)
    model, meta = load_model(args.checkpoint)
    trained_on = meta.get("config", {})
    config = model.spikeprune_config
    dataset = checkpoint_dataset(args.checkpoint, config, trained_on, args.dataset, args.data_dir)
    encoding = args.encoding or trained_on.get("encoding", "direct")
    loader = BatchLoader(dataset, "test", args.batch_size, shuffle=False, seed=args.seed, encoding=encoding,
                         timesteps=config["T"])
    if (meta.get("quantization") or {}).get("layers"):
        # A `spikeprune compress` checkpoint: evaluate it as it runs, with its weight and membrane
        # quantization (load_model alone gives the stored weights with float membranes).
        from ..compress import load_compressed

        model, meta = load_compressed(args.checkpoint, next(iter(loader))[0])
    # A lottery round's checkpoint carries its mask; SF-IMP-2's dynamic layers keep dense weights behind
    # it, so the network that round evaluated is weights x mask, not the stored weights alone.
    mask = Mask.load(args.mask) if args.mask else stored_mask(load_checkpoint(args.checkpoint)[0])
    if mask is not None:
        mask.check_fits(model)
        mask.apply(model)
    result = evaluate(model, loader)
    metrics = {"test_accuracy": result["accuracy"], "test_loss": result["loss"],
               "firing_rate": result["firing_rate"], "firing_rates": result["firing_rates"],
               "checkpoint": str(Path(args.checkpoint)), "dataset": dataset.name, "encoding": encoding,
               "mask": args.mask or ("stored in the checkpoint" if mask is not None else None)}
    write_json(out / "metrics.json", metrics)
    print(json.dumps({k: metrics[k] for k in ("test_accuracy", "firing_rate")}, indent=2))
    return 0
