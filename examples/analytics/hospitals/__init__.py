"""Federated analytics over 5 hospitals' synthetic patient records."""
