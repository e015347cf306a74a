"""Pollinate with JAX: the quickstart's MLP on scikit-learn's digits, in JAX and optax."""
