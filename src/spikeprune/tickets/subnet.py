"""Edge-popup's science: score-carrying layers and the subnetwork they select in a *random* SNN.

Ramanujan et al., "What's hidden in a randomly weighted neural network?" (CVPR 2020), applied to
SNNs as in LTH-SNN §5 / Appendix E (the strong lottery ticket, SPEC §5):

* every prunable layer (every conv and linear, the encoding layer and the classifier included)
  keeps its weights ``w`` frozen at their random init and carries a score tensor ``s`` of the
  same shape;
* the forward pass uses ``w ⊙ m`` where ``m`` keeps the ``k = round(density · numel)`` weights of
  the layer with the largest ``|s|`` (per layer, the same density in every layer);
* the backward pass is straight-through: ``m`` is treated as the identity, so
  ``dL/ds_uv = sign(s_uv) · w_uv · dL/d(w ⊙ m)_uv = sign(s_uv) · w_uv · Σ_t (dL/dI_v,t) S_u,t``
  — LTH-SNN Eq. 11's ``(∂L/∂I_v) S_u w_uv`` summed over timesteps (and positions of a conv);
* the scores follow ordinary gradient *descent*, ``s ← s − α dL/ds`` (SGD with momentum and
  weight decay on the scores). LTH-SNN Eq. 11 prints ``s ← s + α ...``; Ramanujan's code (and
  every optimizer) subtracts, and the plus sign would *ascend* the loss. We descend.

BatchNorm is non-affine by default (no gamma/beta), so the only thing learnt is *which* weights
exist. ``affine_bn=True`` trains BN gamma/beta as well; every result then says so, loudly,
because it is no longer an untrained network. Score-carrying layers have no bias (a trained
bias would be a trained weight).

Frozen-weight inits (``fan = fan_in``, gain sqrt(2) as Ramanujan's code uses for ReLU; the LIF
spike is a rectified output too, and BN after a layer removes any global scale anyway):

* ``signed_constant`` (default, Ramanujan's best): ``w = ±gain/sqrt(fan)``, random sign;
* ``kaiming_normal``: ``w ~ N(0, gain²/fan)``;
* ``kaiming_uniform``: ``w ~ U(−gain·sqrt(3/fan), +gain·sqrt(3/fan))``.

``scale_fan=True`` uses ``fan · density`` (Ramanujan's ``--scale-fan``): the variance a unit
receives through the kept weights then matches the dense init. It only matters where no BN follows
(the classifier, Res-SNN-19's fc1). Scores start as ``U(−1/sqrt(fan), 1/sqrt(fan))`` (Ramanujan).

Density is the one knob: ``density`` = fraction of weights *kept* in every layer, in (0, 1];
results also report ``sparsity = 1 − density``.

Export: :func:`export_subnetwork` turns a searched model into an *ordinary* registered model (frozen weights
⊙ mask, zero biases, a non-affine BN becomes an affine BN with gamma = 1, beta = 0 and the same
running statistics) plus a :class:`~spikeprune.tickets.masks.Mask`; it computes exactly what the searched
model computes, with no score machinery.

The search that learns the scores (run folders, resume, one search per density, the quickstart demo)
is :mod:`spikeprune.tickets.edgepopup`, which re-exports every public name of this module.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from spikeprune.core.config import check_fraction
from spikeprune.core.diagnostics import UserError
from spikeprune.core.io import load_checkpoint
from spikeprune.engine.models import create_model
from spikeprune.engine.train import load_model_state
from spikeprune.tickets.masks import PRUNABLE_TYPES, Mask, prunable_weights
from spikeprune.topology import BATCHNORM

__all__ = [
    "GAIN",
    "INITS",
    "SubnetConv1d",
    "SubnetConv2d",
    "SubnetConv3d",
    "SubnetLinear",
    "TopKMask",
    "check_density",
    "export_subnetwork",
    "load_search_model",
    "num_kept",
    "scored_layers",
    "subnet_mask",
    "to_edgepopup",
]

#: frozen-weight initialisations (see the module docstring)
INITS = ("signed_constant", "kaiming_normal", "kaiming_uniform")
#: ReLU gain, as in Ramanujan's code (``nn.init.calculate_gain("relu")``)
GAIN = math.sqrt(2.0)


# ---------------------------------------------------------------------------------------------
# The knob.
# ---------------------------------------------------------------------------------------------


def check_density(density: Any, name: str = "density") -> float:
    """``density`` as a float in (0, 1] (fraction of weights KEPT), or ValueError naming it."""
    return check_fraction(density, name, "(0, 1]", "the fraction of weights kept; sparsity = 1 - density")


def num_kept(numel: int, density: float, name: str = "layer") -> int:
    """Weights a layer of ``numel`` weights keeps: ``round(density * numel)``; 0 is refused."""
    k = round(check_density(density) * numel)
    if k < 1:
        raise UserError(f"density {density!r} keeps no weight of {name} ({numel} weights); "
                         f"the smallest usable density for it is {0.5 / numel:.3g}")
    return int(k)


# ---------------------------------------------------------------------------------------------
# The subnet mask: a tiny autograd Function with a straight-through backward.
# ---------------------------------------------------------------------------------------------


class TopKMask(torch.autograd.Function):
    """``m = 1`` on the ``k`` largest entries of ``magnitude`` (per layer), else 0; gradient passes straight through.

    ``magnitude`` is ``|scores|`` (any shape); ``m`` has its shape and dtype. Ties are broken by
    ``torch.topk``, deterministically on a given device.
    """

    @staticmethod
    def forward(ctx: Any, magnitude: torch.Tensor, k: int) -> torch.Tensor:  # type: ignore[override]
        flat = magnitude.detach().flatten()
        mask = torch.zeros_like(flat)
        mask[torch.topk(flat, k, sorted=False).indices] = 1.0
        return mask.view_as(magnitude)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        # Straight-through (Ramanujan et al. 2020): d m / d |s| := identity.
        return grad, None


class _Scored:
    """Mixin for a conv/linear layer with frozen ``weight``, trainable ``scores`` and no bias.

    ``density`` (fraction kept) sets ``k = round(density * weight.numel())``; the forward pass uses
    ``weight * TopKMask(|scores|, k)``.
    """

    weight: nn.Parameter
    scores: nn.Parameter
    density: float
    k: int
    had_bias: bool

    def _setup(self, density: float, had_bias: bool, name: str) -> None:
        self.weight.requires_grad_(False)  # frozen at init: only the scores learn
        self.scores = nn.Parameter(torch.empty_like(self.weight))
        self.density = check_density(density)
        self.k = num_kept(self.weight.numel(), self.density, name)
        self.had_bias = had_bias

    def mask(self) -> torch.Tensor:
        """The float 0/1 mask of this forward pass (straight-through to ``scores``), shape of ``weight``."""
        return TopKMask.apply(self.scores.abs(), self.k)

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask()

    def extra_repr(self) -> str:  # type: ignore[misc]
        return super().extra_repr() + f", density={self.density:g}, k={self.k}"  # type: ignore[misc]


class SubnetLinear(_Scored, nn.Linear):
    """Linear without bias whose effective weight is ``weight ⊙ top-k(|scores|)``. ``[N, in] -> [N, out]``.

    ``had_bias`` records whether the layer it replaced had a bias (the export gives it a zero one).
    """

    def __init__(self, in_features: int, out_features: int, *, density: float, had_bias: bool = False,
                 name: str = "layer", device: Any = None, dtype: Any = None) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=False, device=device, dtype=dtype)
        self._setup(density, had_bias, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight())


class _SubnetConv(_Scored):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.masked_weight(), None)  # type: ignore[attr-defined]


def _conv_class(base: type[nn.Module]) -> type[nn.Module]:
    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, groups: int = 1, *, density: float, padding_mode: str = "zeros",
                 had_bias: bool = False, name: str = "layer", device: Any = None, dtype: Any = None) -> None:
        base.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False,
                      padding_mode=padding_mode, device=device, dtype=dtype)
        self._setup(density, had_bias, name)

    doc = (f"{base.__name__} without bias whose effective weight is ``weight ⊙ top-k(|scores|)``; "
           f"arguments as ``nn.{base.__name__}`` plus ``density`` (and ``had_bias``, see SubnetLinear).")
    return type(f"Subnet{base.__name__}", (_SubnetConv, base), {"__init__": __init__, "__doc__": doc,
                                                                "__module__": __name__})


SubnetConv1d = _conv_class(nn.Conv1d)
SubnetConv2d = _conv_class(nn.Conv2d)
SubnetConv3d = _conv_class(nn.Conv3d)
_SUBNET_OF = {nn.Conv1d: SubnetConv1d, nn.Conv2d: SubnetConv2d, nn.Conv3d: SubnetConv3d}


def scored_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{module name: score-carrying layer}`` of a model made by :func:`to_edgepopup`, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, _Scored)}


# ---------------------------------------------------------------------------------------------
# Initialisation.
# ---------------------------------------------------------------------------------------------


def _fan_in(weight: torch.Tensor) -> int:
    return int(weight.shape[1] * math.prod(weight.shape[2:]))


@torch.no_grad()
def _init_frozen_(weight: torch.Tensor, init: str, generator: torch.Generator, fan: float) -> None:
    std = GAIN / math.sqrt(fan)
    if init == "signed_constant":
        sign = torch.randint(0, 2, weight.shape, generator=generator).to(weight.dtype) * 2 - 1
        weight.copy_(sign * std)
    elif init == "kaiming_normal":
        weight.copy_(torch.randn(weight.shape, generator=generator, dtype=weight.dtype) * std)
    elif init == "kaiming_uniform":
        bound = math.sqrt(3.0) * std
        weight.copy_((torch.rand(weight.shape, generator=generator, dtype=weight.dtype) * 2 - 1) * bound)
    else:  # pragma: no cover - checked by to_edgepopup
        raise ValueError(init)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def to_edgepopup(
    model: nn.Module,
    density: float,
    *,
    init: str = "signed_constant",
    affine_bn: bool = False,
    scale_fan: bool = False,
    seed: int = 0,
) -> nn.Module:
    """A copy of ``model`` ready for edge-popup search; ``model`` itself is not modified.

    Every conv/linear layer (first and last included) becomes a score-carrying, bias-free layer
    with frozen weights drawn by ``init``; every BatchNorm becomes non-affine unless ``affine_bn``
    (then gamma = 1, beta = 0 to start, trained with the scores). Running statistics restart.

    Args:
        model: any SNN whose prunable layers are ``nn.Conv{1,2,3}d`` / ``nn.Linear`` (e.g. from
            :func:`~spikeprune.create_model`); its forward is unchanged (``[B, C, H, W]`` or
            ``[T, B, ...]`` -> ``[T, B, classes]`` for the registered models).
        density: fraction of weights KEPT in every layer, in (0, 1].
        init: one of :data:`INITS`.
        affine_bn: also train BN gamma/beta (the results then say the network is not untrained).
        scale_fan: draw weights with ``fan_in * density`` (Ramanujan's ``--scale-fan``).
        seed: weights and scores are drawn from generators seeded by ``seed`` alone, so the same
            seed gives the same random network at every density.

    Raises ValueError for a density outside (0, 1] or one that keeps no weight of some layer, an
    unknown ``init``, or a model without any prunable layer.
    """
    density = check_density(density)
    if init not in INITS:
        raise UserError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer; got {seed!r}")
    prunable_weights(model)  # raises "has no prunable layer"
    if scored_layers(model):
        raise UserError("this model is already an edge-popup model (it has score-carrying layers)")
    searched = copy.deepcopy(model)
    weights_rng = torch.Generator().manual_seed(seed)
    scores_rng = torch.Generator().manual_seed(seed + 0x5C0E5)  # an independent stream, same seed
    bn_affine: dict[str, bool] = {}
    for name, m in list(searched.named_modules()):
        if isinstance(m, PRUNABLE_TYPES) and getattr(m, "weight", None) is not None and m.weight.dim() > 1:
            label = f"{name}.weight"
            common = dict(density=density, had_bias=m.bias is not None, name=label, device=m.weight.device,
                          dtype=m.weight.dtype)
            if isinstance(m, nn.Linear):
                new: nn.Module = SubnetLinear(m.in_features, m.out_features, **common)
            else:
                subnet_type = _SUBNET_OF[next(t for t in _SUBNET_OF if isinstance(m, t))]
                new = subnet_type(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                                  m.groups, padding_mode=m.padding_mode, **common)
            fan = _fan_in(new.weight)
            _init_frozen_(new.weight, init, weights_rng, fan * density if scale_fan else fan)
            with torch.no_grad():  # Ramanujan: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan), 1/sqrt(fan))
                bound = 1.0 / math.sqrt(fan)
                new.scores.copy_((torch.rand(new.scores.shape, generator=scores_rng) * 2 - 1) * bound)
            _set_module(searched, name, new)
        elif isinstance(m, BATCHNORM):
            bn_affine[name] = bool(m.affine)
            m.reset_running_stats()
            if m.affine and affine_bn:  # the option: gamma/beta restart at 1/0 and are trained
                with torch.no_grad():
                    m.weight.fill_(1.0)
                    m.bias.zero_()
            elif m.affine:  # Ramanujan: non-affine BN, so that no parameter but the scores learns
                m.affine = False
                m.register_parameter("weight", None)
                m.register_parameter("bias", None)
    source = getattr(model, "spikeprune_config", None)
    searched.edgepopup = {"density": density, "init": init, "affine_bn": bool(affine_bn),
                          "scale_fan": bool(scale_fan), "seed": seed, "bn_affine": bn_affine}
    searched.edgepopup_source_config = source
    # A searching model is not a registered model (it has scores): its checkpoints say so, and
    # load_search_model (not train.load_model) rebuilds it.
    searched.spikeprune_config = {"kind": "edgepopup-search", "source": source,
                                  **{k: v for k, v in searched.edgepopup.items() if k != "bn_affine"}}
    return searched


# ---------------------------------------------------------------------------------------------
# Reading the subnetwork out.
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def subnet_mask(model: nn.Module) -> Mask:
    """The subnetwork a searching model uses now: ``{"<layer>.weight": bool}``, True = kept.

    Names are those of the exported (ordinary) model's prunable weights.
    """
    layers = scored_layers(model)
    if not layers:
        raise UserError("this model has no score-carrying layer; make one with to_edgepopup()")
    return Mask({f"{name}.weight": m.mask().bool() for name, m in layers.items()})


@torch.no_grad()
def export_subnetwork(model: nn.Module) -> tuple[nn.Module, Mask]:
    """The found subnetwork as an ordinary model (no scores) and its mask.

    Every score-carrying layer becomes the plain layer it replaced, with weight = frozen weight ⊙
    mask and a zero bias where the original layer had one; every BN that was affine in the original
    model is affine again, with gamma = 1, beta = 0 (or the trained values under ``affine_bn``) and
    the searched running statistics. The result computes what ``model`` computes (eval mode), and
    carries the original ``spikeprune_config`` so :func:`~spikeprune.engine.train.save_model` /
    :func:`~spikeprune.engine.train.load_model` rebuild it.
    """
    mask = subnet_mask(model)
    info = getattr(model, "edgepopup", {})
    plain = copy.deepcopy(model)
    for name, m in list(scored_layers(plain).items()):
        keep = mask[f"{name}.weight"]
        if isinstance(m, nn.Linear):
            new: nn.Module = nn.Linear(m.in_features, m.out_features, bias=m.had_bias,
                                       device=m.weight.device, dtype=m.weight.dtype)
        else:
            base = next(b for b in _SUBNET_OF if isinstance(m, b))
            new = base(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                       bias=m.had_bias, padding_mode=m.padding_mode, device=m.weight.device, dtype=m.weight.dtype)
        new.weight.copy_(m.weight * keep.to(m.weight.dtype))
        if new.bias is not None:
            new.bias.zero_()
        _set_module(plain, name, new)
    for name, affine in info.get("bn_affine", {}).items():
        bn = plain.get_submodule(name)
        if affine and not bn.affine:  # gamma = 1, beta = 0: the identity affine map, exactly
            bn.weight = nn.Parameter(torch.ones(bn.num_features, device=bn.running_mean.device))
            bn.bias = nn.Parameter(torch.zeros(bn.num_features, device=bn.running_mean.device))
            bn.affine = True
    for attr in ("edgepopup", "edgepopup_source_config"):
        if hasattr(plain, attr):
            delattr(plain, attr)
    plain.spikeprune_config = getattr(model, "edgepopup_source_config", None)
    for p in plain.parameters():
        p.requires_grad_(True)
    return plain, mask


def load_search_model(path: str | Path) -> nn.Module:
    """Rebuild a *searching* model (scores included) from a checkpoint written while searching.

    (The exported subnetwork, ``subnet.safetensors``, is an ordinary model: use
    :func:`~spikeprune.engine.train.load_model` for it.)
    """
    tensors, meta = load_checkpoint(path)
    config = meta.get("model_config") or {}
    if config.get("kind") != "edgepopup-search":
        raise UserError(f"{path} is not an edge-popup search checkpoint; an ordinary model loads with "
                         "spikeprune.engine.train.load_model")
    source = config.get("source")
    if not isinstance(source, dict) or "name" not in source or source.get("neuron") == "custom":
        raise UserError(f"{path} was searched in a model spikeprune cannot rebuild (unregistered or custom "
                         "neuron); rebuild it, call to_edgepopup and load_model_state yourself")
    base = create_model(source["name"], source["num_classes"], source["in_channels"], source["T"],
                        source["width"], image_size=tuple(source["image_size"]), neuron=source.get("neuron"),
                        **source.get("options", {}))
    model = to_edgepopup(base, config["density"], init=config["init"], affine_bn=config["affine_bn"],
                         scale_fan=config["scale_fan"], seed=config["seed"])
    load_model_state(model, tensors, str(path))
    return model
