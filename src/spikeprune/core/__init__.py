"""Foundations every other package may import: the error type, config schemas, resource limits, safe file I/O, run folders."""
