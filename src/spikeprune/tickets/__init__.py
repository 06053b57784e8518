"""Unstructured pruning: masks, criteria, strategies, calibration, IMP / SF-IMP lottery tickets, edge-popup strong tickets."""
