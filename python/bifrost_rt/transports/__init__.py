"""Transports: how clients reach a realtime session (WebSocket today)."""
