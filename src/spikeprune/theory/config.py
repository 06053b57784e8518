"""The configs of the theory commands: ``analyze flips``, ``analyze validity``, ``theory slth`` / ``width``.

Declared here, below the CLI, so that a study (:mod:`spikeprune.studies.reproduce`) builds the same config a
command would and writes its command line from it (:func:`spikeprune.core.config.to_argv`); the CLI modules
build their flags and YAML keys from these classes (``add_config_arguments``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spikeprune.core.config import CommandConfig, hparam, path_option
from spikeprune.core.diagnostics import UserError
from spikeprune.engine.neuron import DEFAULT_BETA, DEFAULT_V_RESET
from spikeprune.theory.firing import ESTIMATORS
from spikeprune.theory.flips import MODES
from spikeprune.theory.slth import SLTH_U_TH

__all__ = ["FlipsConfig", "SlthConfig", "TargetConfig", "ValidityConfig", "WidthConfig"]


@dataclass
class FlipsConfig(CommandConfig):
    """What ``spikeprune analyze flips`` reads (flags and ``--config`` YAML keys)."""

    checkpoint: str | None = path_option("a spikeprune .safetensors checkpoint", required=True)
    perturb: tuple[str, ...] = hparam(
        (), "prune:<mask file> | prune:<sparsity>[:magnitude|sf|random] | quantize:<bits>[:mean|max|percentile] | "
            "weight-noise:<sigma, relative to each weight tensor's std> | input-noise:<sigma>",
        required=True, repeat=True, metavar="SPEC")
    mode: str = hparam("both", "local: every layer fed the reference spikes (the lemmas' setting); end_to_end: "
                               "errors propagate", (*MODES, "both"))
    dataset: str | None = hparam(None, "dataset (default: the one the checkpoint was trained on)")
    data_dir: str | None = path_option("directory holding the dataset files", metavar="DIR")
    samples: int = hparam(512, "test samples analysed", bounds="[1, inf)")
    batch_size: int = hparam(128, "batch size", bounds="[1, inf)")
    p_sup: str = hparam("kde", "estimator of p_sup, the density of u near u_th",
                         tuple(reversed(ESTIMATORS)))  # the default (kde) first
    calibration_batches: int = hparam(8, "training batches for the SF criterion's statistics", bounds="[1, inf)")
    seed: int = hparam(0, "seed of noise and random pruning", bounds="[0, 4294967295]")

    def check(self) -> None:
        from spikeprune.theory.perturb import parse_perturbation

        if not self.perturb:
            raise UserError("perturb needs at least one perturbation")
        for spec in self.perturb:  # a typo or a missing mask file fails before any work or output
            p = parse_perturbation(spec)
            if p.mask is not None and not Path(p.mask).is_file():
                raise UserError(f"mask file {p.mask!r} of perturbation {spec!r} does not exist")


@dataclass
class ValidityConfig(CommandConfig):
    """What ``spikeprune analyze validity`` reads (flags and ``--config`` YAML keys)."""

    checkpoint: str | None = path_option("a spikeprune .safetensors checkpoint", required=True)
    criteria: tuple[str, ...] = hparam(("sf", "sf-rms", "magnitude", "random"), "criteria to test", nargs="+",
                                       metavar="NAME")
    layers: tuple[str, ...] = hparam((), "prunable weights to test (default: every layer that drives a spiking "
                                         "neuron)", nargs="+", metavar="WEIGHT")
    groups: int = hparam(10, "equal-sized weight sets per layer, spanning the range of scores", bounds="[2, inf)",
                         metavar="K")
    samples: int = hparam(512, "validation samples the flips are measured on (test samples when the checkpoint "
                               "was trained without a validation split)", bounds="[1, inf)")
    batch_size: int = hparam(128, "batch size", bounds="[1, inf)")
    calibration_batches: int = hparam(8, "training batches for the firing-aware criteria's statistics",
                                      bounds="[1, inf)")
    dataset: str | None = hparam(None, "dataset (default: the one the checkpoint was trained on)")
    data_dir: str | None = path_option("directory holding the dataset files", metavar="DIR")
    seed: int = hparam(0, "seed of the random criterion", bounds="[0, 4294967295]")

    def check(self) -> None:
        from spikeprune.tickets.criteria import check_criterion

        for c in self.criteria:
            check_criterion(c)


@dataclass
class TargetConfig(CommandConfig):
    """The target SNN and the tolerances both theory commands share (flags and ``--config`` YAML keys)."""

    N: int | None = hparam(None, "target layer width N", required=True, bounds="[1, inf)", flags=("--neurons",))
    L: int = hparam(1, "target spiking layers L", bounds="[1, inf)", flags=("--layers",))
    T: int = hparam(1, "timesteps T", bounds="[1, inf)", flags=("--timesteps",))
    eps: float | None = hparam(None, "allowed input-feature error eps", required=True, bounds="(0, inf)")
    delta: float = hparam(0.1, "failure probability delta of Theorem 4.3", bounds="(0, 1]")
    u_th: float = hparam(SLTH_U_TH, "threshold, 0 < u_th < 1 (checked with the reason by spikeprune.theory.slth)")
    beta: float = hparam(DEFAULT_BETA, "membrane decay", bounds="(0, 1)")


@dataclass
class SlthConfig(TargetConfig):
    """``theory slth``: the construction run on random large networks."""

    k: tuple[int, ...] = hparam((), "widths k to evaluate, each >= N (default: a grid over the construction's "
                                    "transition)", metavar="K1,K2,...")
    trials: int = hparam(50, "random large networks for the success rate", bounds="[1, inf)")
    equality_trials: int = hparam(10, "of those, how many are built at every k and run on the inputs",
                                  bounds="[0, inf)")
    samples: int = hparam(256, "input spike trains", bounds="[1, inf)")
    rate: float = hparam(0.3, "input firing rate", bounds="[0, 1]")
    v_reset: float = hparam(DEFAULT_V_RESET, "reset potential, 0 <= v_reset < u_th", bounds="[0, 1)")
    seed: int = hparam(0, "random seed", bounds="[0, 4294967295]")
    compare_relu: bool = hparam(False, "also measure the two-neurons-per-weight ReLU construction on the same "
                                       "networks")
    max_memory_gb: float | None = hparam(None, "largest large network allowed, 2*L*N*k float32 weights (default: "
                                               "physical memory)", bounds="(0, inf)", metavar="GB")

    def check(self) -> None:
        if self.equality_trials > self.trials:
            raise UserError(f"equality_trials ({self.equality_trials}) are a subset of the trials; they cannot "
                            f"exceed trials ({self.trials})")
        small = [k for k in self.k if k < self.N]
        if small:
            raise UserError(f"every k must be >= N ({self.N}): the construction copies each target neuron; "
                            f"got {small[0]}")

    def experiment(self) -> dict[str, Any]:
        """:func:`~spikeprune.theory.slth.slth_experiment` at these settings: what ``theory slth`` runs (and
        ``reproduce theory`` per setting)."""
        from spikeprune.theory.slth_experiment import slth_experiment

        max_memory = None if self.max_memory_gb is None else int(self.max_memory_gb * 2**30)
        return slth_experiment(self.N, self.L, self.T, self.eps, ks=list(self.k) or None, trials=self.trials,
                               equality_trials=self.equality_trials, samples=self.samples, rate=self.rate,
                               beta=self.beta, u_th=self.u_th, v_reset=self.v_reset, delta=self.delta,
                               seed=self.seed, compare_relu=self.compare_relu, max_memory=max_memory)


@dataclass
class WidthConfig(TargetConfig):
    """``theory width``: Theorem 4.3's width bound at given constants."""

    p_sup: float | None = hparam(None, "largest density of the target's membrane potentials near u_th "
                                       "(C = 2 p_sup/(1-beta))", required=True, bounds="[0, inf)")
