"""Pollinate with PyTorch: FedProx training of a small CNN on scikit-learn's digits."""
