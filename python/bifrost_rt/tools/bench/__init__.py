"""`bifrost-rt bench`: the relay load benchmark (simulator direct, floor relay, gateway) in one run."""

from bifrost_rt.tools.bench.runner import add_arguments, run_from_args

__all__ = ["add_arguments", "run_from_args"]
