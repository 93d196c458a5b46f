"""`bifrost-rt`: serve, simulate, demo, bench."""

from __future__ import annotations

import argparse
import sys

from bifrost_rt import __version__
from bifrost_rt.config import ConfigError, load_config


def _serve(ns: argparse.Namespace) -> int:
    from bifrost_rt.runtime.server import configure_logging, serve

    try:
        config = load_config(ns.config)
    except ConfigError as error:
        print(f"bifrost-rt: {error}", file=sys.stderr)
        return 2
    overrides = {name: getattr(ns, name) for name in ("host", "port", "workers") if getattr(ns, name) is not None}
    config = config.model_copy(update={"server": config.server.model_copy(update=overrides)})
    configure_logging(config.server.log_level)
    serve(ns.config, config)
    return 0


def _simulate(ns: argparse.Namespace) -> int:
    from bifrost_rt.tools.simulator import SimulatorOptions, run_simulator

    options = SimulatorOptions(
        pace=ns.pace,
        audio_delta_ms=ns.audio_delta_ms,
        response_audio_ms=ns.response_audio_ms,
        fault=ns.fault,
        stamp_events=ns.stamp_events,
        api_keys=ns.api_key or None,
        flavor=ns.flavor,
    )
    run_simulator(ns.host, ns.port, options)
    return 0


def _demo(ns: argparse.Namespace) -> int:
    from bifrost_rt.tools.demo import run_demo

    return run_demo()


def _bench(ns: argparse.Namespace) -> int:
    from bifrost_rt.tools.bench import run_from_args

    return run_from_args(ns)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bifrost-rt", description="Realtime-voice gateway for the OpenAI Realtime API")
    parser.add_argument("--version", action="version", version=f"bifrost-rt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", required=True, help="YAML or TOML configuration file")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(run=_serve)

    simulate = commands.add_parser("simulate", help="run the built-in OpenAI-compatible realtime upstream")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8765)
    simulate.add_argument("--pace", type=float, default=1.0, help="multiple of realtime for audio output; 0 = no pacing")
    simulate.add_argument("--audio-delta-ms", type=int, default=100)
    simulate.add_argument("--response-audio-ms", type=int, default=1200)
    simulate.add_argument("--fault", help="drop | stall | failed | close:<code>, applied to every response")
    simulate.add_argument("--stamp-events", action="store_true", help="add sim_sent_ns to deltas (latency benches)")
    simulate.add_argument("--api-key", action="append", help="accept only this key (repeatable)")
    simulate.add_argument("--flavor", choices=("openai", "azure"), default="openai",
                          help="play OpenAI's API or an Azure OpenAI resource's (paths, api-key, refusals)")
    simulate.set_defaults(run=_simulate)

    demo = commands.add_parser("demo", help="a conversation through the gateway to the simulator")
    demo.set_defaults(run=_demo)

    bench = commands.add_parser("bench", help="relay load benchmark: simulator vs floor relay vs gateway")
    from bifrost_rt.tools.bench import add_arguments

    add_arguments(bench)
    bench.set_defaults(run=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    return ns.run(ns)


if __name__ == "__main__":
    sys.exit(main())
