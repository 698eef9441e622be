"""Trials handed to workers: the board that tracks them and its gRPC service."""
