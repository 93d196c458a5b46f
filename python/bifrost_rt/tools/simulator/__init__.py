"""A local stand-in for the OpenAI Realtime API (GA shapes), or with `flavor="azure"` for an Azure OpenAI resource
(beta shapes on its preview path): deterministic replies, generated audio, injectable faults. Used for demos, tests
and as the upstream in load benchmarks."""

from bifrost_rt.tools.simulator.app import create_simulator_app, run_simulator
from bifrost_rt.tools.simulator.events import EMITTED_EVENT_TYPES
from bifrost_rt.tools.simulator.options import SimulatorOptions

__all__ = ["EMITTED_EVENT_TYPES", "SimulatorOptions", "create_simulator_app", "run_simulator"]
