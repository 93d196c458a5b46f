-- The session UI: the page of sessions groups by session_group and sums per group, so the group index also
-- covers the summed columns (no table lookups); the new filters (provider, transport) get their own indexes.
CREATE INDEX realtime_turns_group_totals ON realtime_turns (session_group, started_at, ended_at, total_tokens, cost_total, status);
CREATE INDEX realtime_turns_provider ON realtime_turns (provider, started_at);
CREATE INDEX realtime_turns_transport ON realtime_turns (transport, started_at);
