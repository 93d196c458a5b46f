"""State kept outside one session: key-value counters (memory or Redis), the durable turn log, the turn-record queue."""
