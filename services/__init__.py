"""Fabula's gRPC services: one process per sub-package, sharing `services.toolkit`."""
