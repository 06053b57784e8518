"""The LIF equals LTH-SNN Eq. 2-4 (hand-computed values and an independent reference).

These tests need no oracle package; the comparisons with SpikingJelly's LIFNode and snnTorch's
Leaky live in test_neuron_oracles.py, so a missing oracle skips only those.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from spikeprune import LIF, record_statistics
from spikeprune.engine.neuron import lif_multistep
from spikeprune.engine.neuron import SURROGATES, observe, surrogate_gradient


# ------------------------------------------------------------------------------------------------
# An independent reference: Eq. 2-4 written line by line, differentiated by autograd.
# ------------------------------------------------------------------------------------------------


class _Heaviside(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, name, alpha):
        ctx.save_for_backward(z)
        ctx.name, ctx.alpha = name, alpha
        return (z >= 0).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        if ctx.name == "atan":
            sg = ctx.alpha / 2 / (1 + (math.pi / 2 * ctx.alpha * z) ** 2)
        elif ctx.name == "sigmoid":
            s = torch.sigmoid(ctx.alpha * z)
            sg = ctx.alpha * s * (1 - s)
        elif ctx.name == "triangle":
            sg = torch.clamp(ctx.alpha - ctx.alpha**2 * z.abs(), min=0)
        else:  # rectangle
            sg = ctx.alpha * (z.abs() < 0.5 / ctx.alpha).to(z.dtype)  # SpikingJelly Rect
        return g * sg, None, None


def reference_lif(x, beta, u_th, v_reset, surrogate="atan", alpha=2.0, detach_reset=False):
    h = torch.zeros_like(x[0])
    spikes, us = [], []
    for t in range(x.shape[0]):
        u = h + x[t]  # Eq. 2
        s = _Heaviside.apply(u - u_th, surrogate, alpha)  # Eq. 3
        s_reset = s.detach() if detach_reset else s
        h = v_reset * s_reset + beta * u * (1 - s_reset)  # Eq. 4
        spikes.append(s)
        us.append(u)
    return torch.stack(spikes), torch.stack(us)


def test_hand_computed_sequence():
    # beta = 0.5, u_th = 1, V_reset = 0. Inputs 0.6, 0.6, 0.6, 1.2:
    # u1 = 0.6 (no spike) h1 = 0.3; u2 = 0.9 (no) h2 = 0.45; u3 = 1.05 (spike) h3 = 0; u4 = 1.2 (spike)
    x = torch.tensor([0.6, 0.6, 0.6, 1.2], dtype=torch.float64).view(4, 1)
    s, u = lif_multistep(x, beta=0.5, u_th=1.0, v_reset=0.0)
    assert s.flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
    assert torch.allclose(u.flatten(), torch.tensor([0.6, 0.9, 1.05, 1.2], dtype=torch.float64))


def test_threshold_is_inclusive_and_reset_value():
    # Hea(0) = 1: u exactly at u_th fires; V_reset = -0.25 is where h lands after a spike.
    x = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).view(3, 1)
    s, u = lif_multistep(x, beta=0.5, u_th=1.0, v_reset=-0.25)
    assert s.flatten().tolist() == [1.0, 0.0, 0.0]
    assert u.flatten().tolist() == [1.0, -0.25, -0.125]


@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("v_reset", [0.0, -0.3])
def test_equals_equations_forward_and_backward(surrogate, detach_reset, v_reset):
    torch.manual_seed(0)
    beta, u_th = 0.7, 0.8
    alpha = SURROGATES[surrogate][1]
    x = (torch.randn(6, 5, 3, 4, 4, dtype=torch.float64) * 0.7 + 0.4).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    s, u = lif_multistep(x, beta, u_th, v_reset, surrogate, None, detach_reset)
    s_ref, u_ref = reference_lif(x_ref, beta, u_th, v_reset, surrogate, alpha, detach_reset)
    assert torch.equal(s, s_ref)
    assert torch.allclose(u, u_ref, atol=1e-12)
    g = torch.randn_like(s)
    (s * g).sum().backward()
    (s_ref * g).sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-10)


def test_surrogate_gradient_does_not_modify_input_and_matches_formula():
    z = torch.linspace(-2, 2, 101, dtype=torch.float64)
    before = z.clone()
    sg = surrogate_gradient(z, "atan", 2.0)
    assert torch.equal(z, before)
    assert torch.allclose(sg, 1 / (1 + (math.pi * z) ** 2))
    for name in SURROGATES:  # every surrogate integrates to ~1 (it replaces a unit step)
        zz = torch.linspace(-20, 20, 400001, dtype=torch.float64)
        area = torch.trapezoid(surrogate_gradient(zz, name), zz).item()
        assert abs(area - 1) < 0.05, (name, area)


def test_stateless_repeatable_and_deepcopy_safe():
    torch.manual_seed(1)
    lif = LIF()
    x = torch.randn(4, 8, 16) + 0.5
    a = lif(x)
    b = copy.deepcopy(lif)(x)
    c = lif(x)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not any(torch.is_tensor(v) for v in vars(lif).values())  # no hidden state tensors


def test_bad_parameters():
    for kwargs in [dict(beta=0.0), dict(beta=1.0), dict(beta=1.5), dict(u_th=float("nan")),
                   dict(surrogate="nope"), dict(alpha=-1.0)]:
        with pytest.raises(ValueError):
            LIF(**kwargs)
    with pytest.raises(ValueError, match=r"\[T, B"):
        lif_multistep(torch.ones(5))


@pytest.mark.parametrize("v_reset", [0.0, -0.3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_inference_path_spikes_are_bit_identical(v_reset, dtype):
    # Without gradients and observers LIF.forward skips materialising u (neuron._lif_forward(keep_u=False)); the
    # spikes must be exactly those of the training path and of Eq. 2-4 written out.
    torch.manual_seed(3)
    lif = LIF(beta=0.7, u_th=0.8, v_reset=v_reset)
    x = (torch.randn(6, 5, 3, 4, 4) * 0.7 + 0.4).to(dtype)
    with torch.no_grad():
        fast = lif(x)
    train_path = lif(x.clone().requires_grad_())  # the autograd path, which keeps u for its backward
    reference, _ = reference_lif(x.double(), 0.7, 0.8, v_reset)
    assert fast.dtype == (torch.float32 if dtype == torch.bfloat16 else dtype)
    assert torch.equal(fast, train_path.detach())
    if dtype == torch.float64:
        assert torch.equal(fast, reference)
    seen = []
    with torch.no_grad(), observe(lif, lambda m, u, s: seen.append(u)):  # an observer still gets u
        lif(x)
    assert len(seen) == 1 and seen[0].shape == x.shape


def test_bf16_input_keeps_fp32_membrane():
    x = (torch.randn(4, 3, 10) + 0.5)
    s32, _ = lif_multistep(x)
    s16, u16 = lif_multistep(x.to(torch.bfloat16).float().to(torch.bfloat16))
    assert u16.dtype == torch.float32 and s16.dtype == torch.float32
    ref, _ = lif_multistep(x.to(torch.bfloat16).float())
    assert torch.equal(s16, ref)


def test_statistics_match_direct_computation():
    torch.manual_seed(2)
    model = torch.nn.Sequential(LIF())
    batches = [torch.randn(4, 5, 3, 2, 2) + 0.6 for _ in range(3)]
    with record_statistics(model) as stats:
        for b in batches:
            model(b)
    st = stats["0"]
    us, ss = [], []
    for b in batches:
        s, u = lif_multistep(b)
        us.append(u.transpose(0, 2).reshape(3, -1))
        ss.append(s.transpose(0, 2).reshape(3, -1))
    u_all, s_all = torch.cat(us, 1).double(), torch.cat(ss, 1).double()
    assert torch.allclose(st.membrane_mean, u_all.mean(1))
    assert torch.allclose(st.membrane_var, u_all.var(1, unbiased=False))
    assert torch.allclose(st.firing_rate, s_all.mean(1))
    assert st.count == u_all.shape[1]
    assert abs(stats.firing_rate - s_all.mean().item()) < 1e-12
    assert model[0].observer is None  # recording ends with the block
