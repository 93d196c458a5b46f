"""State the gateway keeps outside a single session: key-value state (and, later, turn logs)."""
