"""Fabula's HTTP/JSON + SSE gateway in front of the gRPC services."""
