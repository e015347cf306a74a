"""Flower's twin of Pollinate's deployment benchmark app (``benchmarks/flower_deployment.py``)."""
