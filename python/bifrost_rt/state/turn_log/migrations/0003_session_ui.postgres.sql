-- The session UI's list groups the matching turns by session_group and sums per group. The index covers every
-- column that query reads but the summaries (a B-tree entry must stay under 2.7 kB; text search scans the table);
-- provider and transport, the UI's new filters, get indexes of their own.
CREATE INDEX realtime_turns_sessions ON realtime_turns (
    session_group, started_at, ended_at, total_tokens, cost_total, status, principal, model, provider, transport
);
CREATE INDEX realtime_turns_provider ON realtime_turns (provider, started_at);
CREATE INDEX realtime_turns_transport ON realtime_turns (transport, started_at);
