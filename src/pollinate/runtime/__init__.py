"""Runtimes: where nodes live (one process, a worker pool, real machines over gRPC)."""
