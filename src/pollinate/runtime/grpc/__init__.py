"""Deployment over gRPC: server, node agent, state, security."""
