"""Session UI page times on a big turn log: a SQLite log of 100,000 turns, the gateway serving /ui over it.

    .venv/bin/python benches/ui_pages.py [--store sqlite|postgres] [--turns 100000] [--turns-per-session 10] [--runs 30]

With `--store postgres` the log is a throwaway PostgreSQL cluster on loopback (tests/services.py), ANALYZEd after
the fill. The log is written through the store's own insert (so the migrations and indexes are the shipped ones): sessions
of `--turns-per-session` turns spread over 30 days, four keys, three models, both transports, one turn in 50
failed and one in 40 refused, transcripts of a few words. Each page is fetched `--runs` times by an httpx client
logged in with the admin key, after one warm-up fetch; the p50 and p95 of the whole request (server render
included) are printed per page.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bifrost_rt.config import parse_config
from bifrost_rt.runtime.app import create_app
from bifrost_rt.state.turn_log import SQLiteTurnStore, TurnLogStore
from bifrost_rt.state.turn_log.postgres import PostgresTurnStore

from servers import ServerThread  # noqa: E402
from services import PostgresServer, free_port, postgres_bin_dir  # noqa: E402

ADMIN_KEY = "sk-bf-bench-admin"
KEYS = ["team-a", "team-b", "support", "batch"]
MODELS = ["gpt-realtime", "gpt-realtime-mini", "gpt-4o-realtime-preview"]
WORDS = "weather paris invoice refund lighthouse order delivery password account schedule meeting".split()
DAYS = 30


def turn(n: int, session: int, index: int, started_at: float, rng: random.Random) -> dict[str, Any]:
    status = "failed" if n % 50 == 0 else "refused" if n % 40 == 0 else "completed"
    said = " ".join(rng.choice(WORDS) for _ in range(6))
    answer = " ".join(rng.choice(WORDS) for _ in range(12))
    tokens = rng.randint(50, 400)
    return {
        "id": f"turn_{n:08d}",
        "object": "realtime.turn",
        "session_id": f"sess_bf_{session:07d}",
        "session_group": f"sess_bf_{session:07d}",
        "provider_session_id": f"sess_{session:07d}",
        "principal": KEYS[session % len(KEYS)],
        "key_id": f"vk_{session % len(KEYS):016d}",
        "provider": "openai",
        "model": MODELS[session % len(MODELS)],
        "transport": "webrtc" if session % 5 == 0 else "websocket",
        "response_id": None if status == "refused" else f"resp_{n}",
        "status": status,
        "status_reason": {"failed": "upstream_connection_lost", "refused": "content_blocked"}.get(status),
        "error": None if status == "completed" else {"type": "server_error", "code": "upstream_connection_lost"},
        "inputs": [{"kind": "text", "item_id": f"item_{n}", "call_id": None, "text": said}],
        "input_summary": said,
        "output": {"text": answer, "transcript": "", "text_truncated": False, "transcript_truncated": False,
                   "audio_bytes": 0, "tool_calls": []},
        "output_summary": answer,
        "usage": {"input_tokens": tokens // 2, "output_tokens": tokens - tokens // 2, "total_tokens": tokens,
                  "input_text_tokens": tokens // 2, "output_text_tokens": tokens - tokens // 2},
        "transcription_usage": [],
        "cost": {"total": tokens * 1.2e-5, "transcription": 0.0},
        "latency_ms": {"queue": 4.0, "first_delta": 180.0 + index, "total": 900.0 + 10 * index},
        "started_at": started_at,
        "ended_at": started_at + 0.9,
        "metadata": {"voice": "alloy", "priced": True},
        "raw": None,
    }


async def fill(store: TurnLogStore, turns: int, per_session: int) -> None:
    rng = random.Random(7)
    await store.start()
    now = time.time()
    batch: list[dict[str, Any]] = []
    for n in range(turns):
        session, index = divmod(n, per_session)
        session_start = now - DAYS * 86400 * (1 - session / max(1, turns // per_session))
        batch.append(turn(n, session, index, session_start + index * 5.0, rng))
        if len(batch) == 5000:
            await store.write_dicts(batch)
            batch = []
    if batch:
        await store.write_dicts(batch)
    if isinstance(store, PostgresTurnStore):
        await store._fetch("VACUUM ANALYZE", [])  # what autovacuum would have done: statistics, the visibility map
    await store.close()


@contextlib.contextmanager
def turn_log(kind: str, state: str) -> Any:
    """(the store to fill, the gateway's turn_log configuration)."""
    if kind == "sqlite":
        path = Path(state) / "turns.db"
        yield SQLiteTurnStore(path), {"store": "sqlite", "sqlite_path": str(path)}
        return
    server = PostgresServer(postgres_bin_dir(), free_port())
    try:
        server.init()
        server.start()
        dsn = server.create_database("ui_bench")
        yield PostgresTurnStore(dsn), {"store": "postgres", "postgres_dsn": dsn}
    finally:
        server.destroy()


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--turns", type=int, default=100_000)
    parser.add_argument("--turns-per-session", type=int, default=10)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ui-bench-") as state, turn_log(args.store, state) as (store, log_config):
        started = time.perf_counter()
        asyncio.run(fill(store, args.turns, args.turns_per_session))
        print(f"{args.store}: filled {args.turns} turns ({args.turns // args.turns_per_session} sessions) in {time.perf_counter() - started:.1f} s")
        config = parse_config({
            "providers": {"openai": {"base_url": "http://127.0.0.1:9/v1", "api_key": "unused"}},
            "virtual_keys": [{"key": f"sk-bf-{name}", "name": name} for name in KEYS],
            "admin_keys": [ADMIN_KEY],
            "turn_log": {**log_config, "spill_path": f"{state}/spill.jsonl"},
            "ui": {"enabled": True, "secret": "bench-ui-secret-0123456789"},
        })
        with ServerThread(create_app(config, turn_sinks=[])) as gateway, httpx.Client(base_url=gateway.url, timeout=60) as ui:
            form = ui.get("/ui/login")
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
            assert ui.post("/ui/login", data={"key": ADMIN_KEY, "csrf_token": token}).status_code == 303
            middle = f"sess_bf_{args.turns // args.turns_per_session // 2:07d}"
            week_ago = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 7 * 86400))
            pages = {
                "sessions (newest 50)": "/ui/sessions",
                "sessions page 100": "/ui/sessions?page=100",
                "sessions by key": "/ui/sessions?key=support",
                "sessions by model": "/ui/sessions?model=gpt-realtime-mini",
                "sessions by transport": "/ui/sessions?transport=webrtc",
                "sessions by status": "/ui/sessions?status=failed",
                "sessions last 7 days": f"/ui/sessions?since={week_ago}",
                "sessions text search": "/ui/sessions?q=lighthouse%20order",
                "session page": f"/ui/sessions/{middle}",
                "live": "/ui/live",
                "live.json": "/ui/live.json",
                "keys": "/ui/keys",
            }
            print(f"{'page':<24}{'p50 ms':>10}{'p95 ms':>10}")
            for name, path in pages.items():
                reply = ui.get(path)
                assert reply.status_code == 200, (path, reply.status_code)
                times = []
                for _ in range(args.runs):
                    begin = time.perf_counter()
                    ui.get(path)
                    times.append((time.perf_counter() - begin) * 1000)
                print(f"{name:<24}{statistics.median(times):>10.1f}{p(times, 95):>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
