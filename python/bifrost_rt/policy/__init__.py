"""Policy: who a caller is, what they may do, and what a turn costs (auth, hooks, governance, client secrets, pricing)."""
