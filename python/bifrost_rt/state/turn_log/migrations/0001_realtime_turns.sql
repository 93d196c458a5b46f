-- One row per realtime turn (a TurnRecord). {json} is JSONB on PostgreSQL and TEXT on SQLite.
-- Timestamps are unix seconds. cost_total and total_tokens are derived at insert, for sums and sorting.
CREATE TABLE realtime_turns (
    id                  TEXT PRIMARY KEY,
    object              TEXT NOT NULL,
    session_id          TEXT NOT NULL,
    session_group       TEXT NOT NULL,
    provider_session_id TEXT,
    principal           TEXT NOT NULL,
    key_id              TEXT NOT NULL,
    provider            TEXT NOT NULL,
    model               TEXT,
    transport           TEXT NOT NULL,
    response_id         TEXT,
    status              TEXT NOT NULL,
    status_reason       TEXT,
    error               {json},
    inputs              {json} NOT NULL,
    input_summary       TEXT NOT NULL,
    output              {json} NOT NULL,
    output_summary      TEXT NOT NULL,
    usage               {json},
    transcription_usage {json} NOT NULL,
    cost_total          DOUBLE PRECISION NOT NULL,
    cost                {json} NOT NULL,
    total_tokens        BIGINT NOT NULL,
    latency_ms          {json} NOT NULL,
    started_at          DOUBLE PRECISION NOT NULL,
    ended_at            DOUBLE PRECISION NOT NULL,
    metadata            {json} NOT NULL,
    raw                 {json}
);

CREATE INDEX realtime_turns_session_group ON realtime_turns (session_group, started_at, id);
CREATE INDEX realtime_turns_key_id ON realtime_turns (key_id, started_at);
CREATE INDEX realtime_turns_principal ON realtime_turns (principal, started_at);
CREATE INDEX realtime_turns_started_at ON realtime_turns (started_at, id);
CREATE INDEX realtime_turns_model ON realtime_turns (model);
CREATE INDEX realtime_turns_status ON realtime_turns (status);
