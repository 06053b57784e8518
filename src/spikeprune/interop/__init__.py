"""Meet users where they are: SpikingJelly / snnTorch models and NIR export (docs/interop.md).

* :mod:`.adapters`: :func:`adapt` wraps a third-party SNN so spikeprune's statistics, criteria, pruning,
  flip analysis, weight quantization and cost report run on it unchanged.
* :mod:`.pipeline`: :func:`analyse_third_party`, what ``spikeprune interop`` runs (adapt -> train ->
  prune -> cost report + flip analysis); :mod:`.config`: :class:`InteropConfig`, its settings (the
  command's flags and the function's defaults).
* :mod:`.nir_export`: :func:`to_nir` / :func:`from_nir` and ``spikeprune export --format nir``
  (needs the optional ``nir`` package; imported lazily).
"""

from spikeprune.interop.adapters import (
    SUPPORTED_NEURONS,
    AdaptedModel,
    NeuronAdapter,
    SpikeMismatchError,
    adapt,
    find_neurons,
    load_factory,
    neuron_summary,
)

__all__ = ["SUPPORTED_NEURONS", "AdaptedModel", "NeuronAdapter", "SpikeMismatchError", "adapt", "find_neurons",
           "load_factory", "neuron_summary"]
