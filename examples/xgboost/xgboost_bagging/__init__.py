"""Pollinate XGBoost example: federated gradient-boosted trees by bagging."""
