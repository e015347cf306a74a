"""Pollinate: federated learning that moves the computation to the data."""

__version__ = "0.1.0"
