"""The configs of the engine: the neuron-parameter bundle and the training run.

Field machinery (declaration, coercion, bounds, YAML, identity) is :mod:`spikeprune.core.config`;
allowed values come from the code that implements them (``SURROGATES`` from the neuron, ``ENCODINGS``
from the data module), so a choice is never typed twice.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from spikeprune.core.config import fields_of, hparam, validate_fields
from spikeprune.core.diagnostics import UserError
from spikeprune.engine.data import ENCODINGS
from spikeprune.engine.neuron import (DEFAULT_BETA, DEFAULT_DETACH_RESET, DEFAULT_SURROGATE, DEFAULT_U_TH,
                                      DEFAULT_V_RESET, SURROGATES, beta_in_range)

__all__ = ["NeuronConfig", "TrainConfig", "validate"]


@dataclass
class NeuronConfig:
    """The LIF neuron's parameters (LTH-SNN Eq. 2-4), as one bundle (Norse's ``LIFParameters``).

    ``lif_kwargs()`` is what :class:`~spikeprune.engine.neuron.LIF` and ``create_model(neuron=...)`` take."""

    beta: float = hparam(DEFAULT_BETA, "LIF membrane decay beta in (0, 1)")
    u_th: float = hparam(DEFAULT_U_TH, "LIF firing threshold u_th")
    v_reset: float = hparam(DEFAULT_V_RESET, "LIF reset potential V_reset")
    surrogate: str = hparam(DEFAULT_SURROGATE, "surrogate gradient", tuple(SURROGATES))
    surrogate_alpha: float | None = hparam(None, "surrogate sharpness (default: the surrogate's own)")
    detach_reset: bool = hparam(DEFAULT_DETACH_RESET, "detach the reset path from the gradient")

    def __post_init__(self) -> None:
        validate_neuron(self)

    def lif_kwargs(self) -> dict[str, Any]:
        """The :class:`~spikeprune.engine.neuron.LIF` arguments (``alpha`` only when set)."""
        kw: dict[str, Any] = {"beta": self.beta, "u_th": self.u_th, "v_reset": self.v_reset,
                              "surrogate": self.surrogate, "detach_reset": self.detach_reset}
        if self.surrogate_alpha is not None:
            kw["alpha"] = self.surrogate_alpha
        return kw


@dataclass
class TrainConfig(NeuronConfig):
    """Model, neuron, data and optimisation of one training run (LTH-SNN / Kim et al. defaults).

    Composed, open_lth style: the neuron fields are :class:`NeuronConfig`'s (declared once, there), and
    every command's config extends this one (``LotteryConfig``, ``EdgePopupConfig``, ``CompressConfig``)
    with its feature's fields. The composition is flat -- one namespace of flags and YAML keys, as
    before -- so presets, checkpoints and run identities stay what they were; :meth:`of` projects any
    command's config back onto the training run it describes, and :attr:`neuron` the neuron bundle."""

    model: str = hparam("convnet", "registered model (mlp, convnet, vgg16, resnet19)")
    dataset: str = hparam("digits", "dataset (digits, fashion_mnist, mnist, cifar10, cifar100, synthetic; event "
                                    "datasets through tonic: nmnist, dvsgesture, cifar10dvs; options as "
                                    "name:key=value,..., e.g. nmnist:time_bins=8,binning=count)")
    width: float = hparam(1.0, "channel width multiplier (> 0)")
    timesteps: int = hparam(4, "simulation timesteps T (>= 1)")
    tdbn: bool = hparam(False, "threshold-dependent BatchNorm (resnet19)")
    encoding: str = hparam("direct", "input encoding (events: an event dataset's frames, already spikes: no "
                                     "encoding)", ENCODINGS)
    epochs: int = hparam(10, "training epochs (>= 1)")
    batch_size: int = hparam(128, "batch size (>= 1)")
    optimizer: str = hparam("sgd", "optimizer", ("sgd", "adam"))
    lr: float = hparam(0.1, "initial learning rate (> 0)")
    momentum: float = hparam(0.9, "SGD momentum in [0, 1)")
    weight_decay: float = hparam(5e-4, "weight decay (>= 0)")
    schedule: str = hparam("cosine", "learning-rate schedule per epoch", ("cosine", "constant"))
    loss: str = hparam("per_timestep", "per_timestep: mean_t CE(out_t); mean_output: CE(mean_t out_t)",
                       ("per_timestep", "mean_output"))
    train_limit: int | None = hparam(None, "use only the first N training samples")
    test_limit: int | None = hparam(None, "use only the first N test samples")
    val_fraction: float = hparam(0.1, "fraction of the training set held out for validation, in [0, 1): every "
                                      "selection (best epoch, criterion, hyperparameter) is made on it, never on test", bounds="[0, 1)")
    val_seed: int = hparam(0, "seed of the validation split (fixed across training seeds by default, so seeds "
                              "are compared on the same held-out samples)", bounds="[0, 4294967295]")
    seed: int = hparam(0, "random seed (model init, data order, Poisson spikes)", bounds="[0, 4294967295]")
    bf16: bool = hparam(False, "bfloat16 autocast for the forward pass (~1.7x on CPU)")
    compile: bool = hparam(False, "torch.compile the model (~1.5x on CPU after ~20 s of compilation)")
    data_dir: str | None = hparam(None, "directory holding the dataset files (default: system paths, then cache)")
    device: str = hparam("auto", "where to train: auto (the GPU when one is visible, else the CPU), cpu, cuda, cuda:N")

    def __post_init__(self) -> None:
        validate(self)

    @classmethod
    def of(cls, source: Any, **changes: Any) -> "TrainConfig":
        """The training run that ``source`` describes, with ``changes``: ``source`` is any config extending
        this one (a ``LotteryConfig``, ...) or a mapping (a preset, a checkpoint's recorded config); the
        keys that are not training fields are dropped. The one projection of a config onto its run."""
        values = source if isinstance(source, dict) else dataclasses.asdict(source)
        return cls(**{**fields_of(cls, values), **changes})

    @property
    def neuron(self) -> NeuronConfig:
        """The neuron-parameter bundle of this run."""
        return NeuronConfig(**fields_of(NeuronConfig, dataclasses.asdict(self)))



def validate_neuron(cfg: Any) -> None:
    """Coerce and check the neuron fields of ``cfg`` (a :class:`NeuronConfig` or any config extending it)."""
    validate_fields(cfg)
    _check(beta_in_range(cfg.beta), "beta must be in (0, 1)", cfg.beta)
    _check(math.isfinite(cfg.u_th) and cfg.u_th > 0, "u_th must be a finite number > 0", cfg.u_th)
    _check(math.isfinite(cfg.v_reset), "v_reset must be finite", cfg.v_reset)
    _check(cfg.surrogate_alpha is None or cfg.surrogate_alpha > 0, "surrogate_alpha must be > 0",
           cfg.surrogate_alpha)


def validate(cfg: Any) -> None:
    """Coerce and check every field (:func:`validate_fields`), then the cross-field rules of TrainConfig."""
    validate_neuron(cfg)
    _check(isinstance(cfg.timesteps, int) and cfg.timesteps >= 1, "timesteps (T) must be >= 1", cfg.timesteps)
    _check(cfg.width > 0 and math.isfinite(cfg.width), "width must be > 0", cfg.width)
    _check(cfg.epochs >= 1, "epochs must be >= 1", cfg.epochs)
    _check(cfg.batch_size >= 1, "batch_size must be >= 1", cfg.batch_size)
    _check(cfg.lr > 0 and math.isfinite(cfg.lr), "lr must be > 0", cfg.lr)
    _check(0.0 <= cfg.momentum < 1.0, "momentum must be in [0, 1)", cfg.momentum)
    _check(cfg.weight_decay >= 0, "weight_decay must be >= 0", cfg.weight_decay)
    _check(cfg.train_limit is None or cfg.train_limit >= 1, "train_limit must be >= 1", cfg.train_limit)
    _check(0.0 <= cfg.val_fraction < 1.0, "val_fraction must be in [0, 1)", cfg.val_fraction)
    _check(cfg.test_limit is None or cfg.test_limit >= 1, "test_limit must be >= 1", cfg.test_limit)
    _check(cfg.device == "auto" or cfg.device == "cpu" or re.fullmatch(r"cuda(:\d+)?", cfg.device) is not None,
           "device must be auto, cpu, cuda or cuda:N", cfg.device)
    # Names are checked against the live registries so a typo fails before any work starts.
    from spikeprune.engine.data import is_event_dataset, list_datasets, parse_dataset
    from spikeprune.engine.models import list_models  # lazily: the model registry imports this module's users

    _check(cfg.model in list_models(), f"unknown model; available: {', '.join(list_models())}", cfg.model)
    _check(cfg.dataset.partition(":")[0] in list_datasets(),
           f"unknown dataset; available: {', '.join(list_datasets())}", cfg.dataset)
    _, options = parse_dataset(cfg.dataset)  # option names checked now, before any file is read
    if is_event_dataset(cfg.dataset):
        from spikeprune.engine.events import settings_for

        settings_for(cfg.dataset.partition(":")[0], **options)  # and the frame settings' values
    # An event dataset's frames are spikes already (no encoding layer); an image is not (Sec. "events" of
    # docs/decisions.md): the pairing is checked here, before any file is read.
    _check((cfg.encoding == "events") == is_event_dataset(cfg.dataset),
           "encoding 'events' goes with an event dataset (nmnist, dvsgesture, cifar10dvs), and only with one",
           (cfg.dataset, cfg.encoding))


def _check(ok: bool, message: str, value: Any) -> None:
    if not ok:
        raise UserError(f"{message}; got {value!r}")


