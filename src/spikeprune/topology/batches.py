"""The one measurement loop: run a few batches through a model under an observer and hooks.

Calibration (:func:`spikeprune.tickets.calibration.calibrate`) and the cost report
(:func:`spikeprune.compression.cost.cost_report`) measure a model the same way; :func:`run_batches` is that
way, written once::

    run = run_batches(model, batches, 8, observer=record, install=add_hooks,
                      empty="calibration needs at least one batch; the calibration data was empty")
    run.batches, run.samples, run.graph

What it does, in order:

1. takes the first batch (``empty`` is raised as a :class:`~spikeprune.core.diagnostics.UserError` if
   there is none) and traces the model on it (:func:`~spikeprune.topology.trace`, a few samples, under
   a do-nothing observer, so ``observer`` never sees the trace's forward pass and the hooks are not yet
   installed);
2. ``install(graph)`` registers the caller's hooks (it gets the graph: a hook may depend on a layer's
   traced layout) and returns their handles;
3. runs ``model(x)`` on the first batch and the next ones, in eval mode with every module's own
   train/eval flag put back afterwards (:func:`~spikeprune.topology.evaluation`) and with ``observer``
   called after every LIF forward (:func:`~spikeprune.engine.neuron.observe`), until ``num_batches``
   batches ran or the data ends;
4. removes the hooks, also when a batch raised.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import nn

from spikeprune.core.diagnostics import UserError
from spikeprune.engine.neuron import Observer, observe
from spikeprune.topology.graph import Graph, evaluation
from spikeprune.topology.tracing import sample_count, trace

__all__ = ["BatchRun", "run_batches"]


class BatchRun(NamedTuple):
    """What :func:`run_batches` ran: ``batches`` run, ``samples`` in them, the ``graph`` traced on the first."""

    batches: int
    samples: int
    graph: Graph


def _inputs(batch: Any) -> Any:
    """``x`` of an ``(x, y)`` pair (tuple or list), else the batch itself."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _no_observer(*_: Any) -> None:
    return None


@torch.no_grad()
def run_batches(model: nn.Module, batches: Iterable[Any], num_batches: int | None, *, observer: Observer,
                install: Callable[[Graph], list[Any]], empty: str, batch_size: int | None = None) -> BatchRun:
    """Run up to ``num_batches`` of ``batches`` through ``model`` (eval mode, no gradients); see the module docstring.

    Args:
        model: any module whose spiking layers are :class:`~spikeprune.LIF`.
        batches: ``(x, y)`` pairs or bare inputs ``x``, as ``model(x)`` takes them: a static batch
            ``[B, C, H, W]`` (or ``[B, F]``) or a time-major ``[T, B, ...]``.
        num_batches: stop after this many batches (``None``: all). At least one batch always runs.
        observer: ``observer(lif, u, spikes)`` with ``u``, ``spikes`` ``[T, B, ...]``, after every LIF forward
            of the measured batches.
        install: ``install(graph) -> handles`` registers the caller's hooks once the graph is traced; every
            returned handle's ``remove()`` is called at the end.
        empty: the message of the :class:`~spikeprune.core.diagnostics.UserError` raised when ``batches``
            holds no batch.
        batch_size: samples per batch when they cannot be read from ``x``; default: dim 1 of a time-major
            input, else dim 0 (:func:`~spikeprune.topology.sample_count`).

    Returns:
        :class:`BatchRun` ``(batches, samples, graph)``.
    """
    it = iter(batches)
    first = next(it, None)
    if first is None:
        raise UserError(empty)
    with observe(model, _no_observer):
        graph = trace(model, _inputs(first))
    seen = samples = 0
    handles: list[Any] = []
    try:
        handles = list(install(graph))
        with evaluation(model), observe(model, observer):
            for batch in itertools.chain([first], it):
                x = _inputs(batch)
                model(x)
                seen += 1
                samples += batch_size if batch_size is not None else sample_count(model, x, graph)
                if num_batches is not None and seen >= num_batches:
                    break
    finally:
        for h in handles:
            h.remove()
    return BatchRun(seen, samples, graph)
