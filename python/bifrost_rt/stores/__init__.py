"""State the gateway keeps outside a single session: key-value counters (`kv`) and the durable turn log (`logs`)."""
