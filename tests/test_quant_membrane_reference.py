"""The membrane-quantized LIF (MINT) is the ordinary LIF with a membrane hook: bit-identical to the old loop.

Until issue 17, ``spikeprune.compression.quant`` had its own LIF time loop for quantized membranes
(``lif_multistep_quantized`` with its own ``_Spike`` and ``_RoundClampSTE``). It is now
``engine.neuron.lif_multistep(..., membrane=hook)``. The functions below marked PRE-REFACTOR REFERENCE
are that old code, copied verbatim from ``compression/quant.py`` at commit 077f104 (only the two imports it
needs are made explicit), so that spikes, membranes and gradients of the new code can be compared with it
bit for bit (``torch.equal``), for every surrogate, with and without ``detach_reset``, several
bit-widths, a non-zero reset, float32 and float64, per-channel and scalar scales, and whole models.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

import spikeprune as sp
from spikeprune.compression import quant as q
from spikeprune.engine.neuron import LIF, SURROGATES, lif_multistep, observe, surrogate_gradient


# ============================ PRE-REFACTOR REFERENCE (compression/quant.py @ 077f104) ============================


class _RefSpike(torch.autograd.Function):
    """Heaviside forward, surrogate backward (the same surrogates as :class:`~spikeprune.LIF`)."""

    @staticmethod
    def forward(ctx, z, surrogate, alpha):  # type: ignore[override]
        ctx.save_for_backward(z)
        ctx.params = (surrogate, alpha)
        return (z >= 0).to(z.dtype)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        return g * surrogate_gradient(z, *ctx.params), None, None


class _RefRoundClampSTE(torch.autograd.Function):
    """``scale * clamp(round(v / scale), lo, hi)``; gradient 1 inside the representable range, 0 outside."""

    @staticmethod
    def forward(ctx, v, scale, lo, hi):  # type: ignore[override]
        q = v / scale
        ctx.save_for_backward((q >= lo - 0.5) & (q <= hi + 0.5))
        return torch.clamp(torch.round(q), lo, hi) * scale

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return g * inside.to(g.dtype), None, None, None


def _ref_lif_multistep_quantized(x, scale, bits, beta=0.5, u_th=1.0, v_reset=0.0, surrogate="atan", alpha=None,
                                 detach_reset=False):
    alpha = SURROGATES[surrogate][1] if alpha is None else float(alpha)
    lo, hi = -float(1 << (bits - 1)), float((1 << (bits - 1)) - 1)
    scale = scale.to(x.dtype).detach()
    h = 0.0
    spikes, us = [], []
    for t in range(x.shape[0]):
        u = _RefRoundClampSTE.apply(h + x[t], scale, lo, hi)
        s = _RefSpike.apply(u - u_th, surrogate, alpha)
        r = s.detach() if detach_reset else s
        h = beta * u * (1 - r) + v_reset * r
        spikes.append(s)
        us.append(u.detach())
    return torch.stack(spikes), torch.stack(us)


class _RefQuantizedLIF(LIF):
    """The old ``QuantizedLIF.forward`` (its own loop); used by swapping ``__class__`` on a copy."""

    def forward(self, x):
        c = x.shape[2] if x.dim() > 2 else 1
        scale = self.membrane_scale.reshape(c, *([1] * (x.dim() - 3))) if x.dim() > 2 else self.membrane_scale
        spikes, u = _ref_lif_multistep_quantized(x, scale, self.membrane_bits, self.beta, self.u_th, self.v_reset,
                                                 self.surrogate, self.alpha, self.detach_reset)
        if self.observer is not None:
            self.observer(self, u, spikes)
        return spikes


# ================================================ END OF REFERENCE ================================================


def _inputs(seed, shape, dtype):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.8 + 0.3).to(dtype)
    upstream = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)  # a non-uniform dL/ds
    return x, upstream


def _run(fn, x, upstream, *args, **kwargs):
    x = x.clone().requires_grad_(True)
    spikes, u = fn(x, *args, **kwargs)
    (spikes * upstream).sum().backward()
    return spikes.detach(), u, x.grad


CASES = list(itertools.product(sorted(SURROGATES), (False, True), (2, 4, 8, 16)))


@pytest.mark.parametrize("surrogate,detach_reset,bits", CASES)
def test_quantized_loop_is_bit_identical_to_the_pre_refactor_loop(surrogate, detach_reset, bits):
    for seed, (dtype, v_reset, alpha) in enumerate([(torch.float32, 0.0, None), (torch.float64, 0.2, 1.7)]):
        x, up = _inputs(seed + 10 * bits, (7, 3, 4, 3, 3), dtype)
        # a per-channel step such that some registers saturate at 2 bits and none do at 16
        scale = torch.tensor([0.05, 0.11, 0.5, 0.02]).view(4, 1, 1)
        kw = dict(beta=0.6, u_th=0.45, v_reset=v_reset, surrogate=surrogate, alpha=alpha, detach_reset=detach_reset)
        ref = _run(_ref_lif_multistep_quantized, x, up, scale, bits, **kw)
        new = _run(q.lif_multistep_quantized, x, up, scale, bits, **kw)
        for name, a, b in zip(("spikes", "u", "grad"), ref, new):
            assert a.dtype == b.dtype and torch.equal(a, b), (name, dtype)
        assert ref[0].sum() > 0 and ref[2].abs().sum() > 0  # the case exercises spikes and gradients


@pytest.mark.parametrize("shape,scale", [((6, 5, 9), torch.tensor(0.07)), ((6, 5, 3), torch.tensor([0.05, 0.1, 0.2])),
                                         ((5, 4, 2, 3, 3, 3), torch.tensor([0.03, 0.09]).view(2, 1, 1, 1))])
def test_quantized_loop_is_bit_identical_on_other_layouts(shape, scale):
    x, up = _inputs(3, shape, torch.float32)
    ref = _run(_ref_lif_multistep_quantized, x, up, scale, 6, u_th=0.3)
    new = _run(q.lif_multistep_quantized, x, up, scale, 6, u_th=0.3)
    for a, b in zip(ref, new):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["convnet", "resnet19", "mlp"])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_quantized_models_are_bit_identical_to_the_pre_refactor_neuron(name, detach_reset):
    """Whole networks (the pre-hooks set each neuron's scale): outputs, observed membranes, all gradients."""
    torch.manual_seed(0)
    model = sp.create_model(name, 4, 1, 3, 0.25, image_size=8, neuron={"detach_reset": detach_reset})
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    q.quantize_model(model, 4, membrane_bits=6, example_input=x)
    ref_model = copy.deepcopy(model)
    swapped = 0
    for m in ref_model.modules():
        if isinstance(m, q.QuantizedLIF):
            m.__class__ = _RefQuantizedLIF
            swapped += 1
    assert swapped >= 2

    def run(net):
        seen = []
        with observe(net, lambda lif, u, s: seen.append(u.clone())):
            out = net(x)
        out.square().sum().backward()
        return out.detach(), seen, [p.grad for p in net.parameters()]

    out_new, u_new, g_new = run(model.train())
    out_ref, u_ref, g_ref = run(ref_model.train())
    assert torch.equal(out_new, out_ref)
    assert len(u_new) == len(u_ref) == swapped and all(torch.equal(a, b) for a, b in zip(u_new, u_ref))
    assert all(torch.equal(a, b) for a, b in zip(g_new, g_ref))
    assert any(g.abs().sum() > 0 for g in g_new)
    with torch.no_grad():  # inference (no gradient): the same spikes as well
        assert torch.equal(model.eval()(x), ref_model.eval()(x))


def test_quantized_lif_without_a_scale_says_how_to_build_it():
    lif = q.QuantizedLIF(membrane_bits=4)
    with pytest.raises(RuntimeError, match="quantize_membranes"):
        lif(torch.randn(3, 2, 4))


def test_an_identity_membrane_hook_gives_the_plain_lif():
    """The hook path (eager autograd loop) computes Eq. 2-4 like the fused/eager kernels do."""
    x, up = _inputs(5, (6, 4, 3, 5), torch.float64)
    ref = _run(lif_multistep, x, up, beta=0.5, u_th=0.4)
    new = _run(lif_multistep, x, up, beta=0.5, u_th=0.4, membrane=lambda u: u)
    assert torch.equal(ref[0], new[0])
    assert torch.allclose(ref[1], new[1], rtol=0, atol=1e-12) and torch.allclose(ref[2], new[2], rtol=0, atol=1e-12)
    assert new[0].sum() > 0


def test_the_membrane_hook_acts_before_the_threshold():
    x = torch.full((3, 1, 1), 0.6)
    plain, _ = lif_multistep(x, beta=0.5, u_th=1.0)
    clipped, u = lif_multistep(x, beta=0.5, u_th=1.0, membrane=lambda v: v.clamp_max(0.8))
    assert plain.flatten().tolist() == [0.0, 0.0, 1.0]  # u = 0.6, 0.9, 1.05
    assert clipped.flatten().tolist() == [0.0, 0.0, 0.0] and u.max() <= 0.8  # u = 0.6, 0.8, 0.8


def test_a_half_precision_input_integrates_in_fp32_like_every_lif():
    """The one deliberate change (docs/decisions.md, issue 17): the old loop integrated a bf16 input in bf16
    (its register step cast to bf16 too); the shared loop keeps fp32 state, as lif_multistep always did."""
    x, up = _inputs(7, (6, 8, 4, 3, 3), torch.float32)
    scale = torch.tensor([0.05, 0.11, 0.3, 0.02]).view(4, 1, 1)
    half = _run(q.lif_multistep_quantized, x.bfloat16(), up.bfloat16(), scale, 8, u_th=0.45)
    full = _run(q.lif_multistep_quantized, x.bfloat16().float(), up.bfloat16().float(), scale, 8, u_th=0.45)
    assert half[0].dtype == torch.float32 and torch.equal(half[0], full[0]) and torch.equal(half[1], full[1])
    assert half[0].sum() > 0
