"""HTTP and WebSocket endpoints: admission, the realtime socket, calls signalling, client secrets, the logs API."""
