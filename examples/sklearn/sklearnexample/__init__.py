"""Pollinate with scikit-learn: federated logistic regression on breast cancer data."""
