-- The session UI's list groups the matching turns by session_group and sums per group. One index covers every
-- column that query reads, the summaries included, so filtering (even searching the text) scans the index, not
-- the much wider table rows.
CREATE INDEX realtime_turns_sessions ON realtime_turns (
    session_group, started_at, ended_at, total_tokens, cost_total, status, principal, model, provider, transport,
    input_summary, output_summary
);
