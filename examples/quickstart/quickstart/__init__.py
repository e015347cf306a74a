"""Pollinate quickstart: federated training of a NumPy MLP on scikit-learn's digits."""
