"""The settings of ``spikeprune interop`` (:class:`InteropConfig`): one declaration for the CLI's flags and
``--config`` YAML keys (``add_config_arguments``) and for the defaults of
:func:`spikeprune.interop.pipeline.analyse_third_party`, which takes such a config or the same settings
as keywords."""

from __future__ import annotations

from dataclasses import dataclass

from spikeprune.core.config import CommandConfig, hparam, path_option

__all__ = ["InteropConfig"]


@dataclass
class InteropConfig(CommandConfig):
    """What ``spikeprune interop`` reads (flags and ``--config`` YAML keys)."""

    model: str | None = hparam(None, "factory returning the network ('file.py:function' or "
                                     "'package.module:function'; runs your code)", required=True,
                               metavar="FILE.py:FN")
    weights: str | None = path_option("safetensors state_dict of the network to load first")
    timesteps: int = hparam(4, "timesteps of direct encoding", bounds="[1, inf)", metavar="T")
    dataset: str = hparam("digits", "dataset (digits: 1x8x8; synthetic: 3x32x32, 10 classes)")
    data_dir: str | None = path_option("directory holding the dataset files", metavar="DIR")
    epochs: int = hparam(0, "train N epochs (Adam) before pruning", bounds="[0, inf)")
    lr: float = hparam(5e-3, "Adam learning rate for --epochs", bounds="(0, inf)")
    batch_size: int = hparam(64, "batch size", bounds="[1, inf)")
    sparsity: float = hparam(0.8, "fraction of weights removed", bounds="[0, 1)")
    criterion: str = hparam("sf", "pruning criterion")
    calibration_batches: int = hparam(4, "training batches of the calibration pass", bounds="[1, inf)")
    analysis_batches: int = hparam(2, "test batches for the cost report and the flip analysis", bounds="[1, inf)")
    seed: int = hparam(0, "random seed", bounds="[0, 4294967295]")

    def check(self) -> None:
        from spikeprune.engine.data import parse_dataset
        from spikeprune.tickets.criteria import check_criterion

        check_criterion(self.criterion)
        parse_dataset(self.dataset)  # the name (options: nmnist:time_bins=8) is checked before any work
