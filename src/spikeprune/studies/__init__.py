"""Studies built from the features: paper protocols, multi-seed sweeps, `reproduce` reports."""
