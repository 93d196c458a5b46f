"""Transports that only move bytes between a client and a provider, driven by the relay core."""
