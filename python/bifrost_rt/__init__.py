"""bifrost_rt: a realtime-voice gateway for the OpenAI Realtime API."""

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bifrost-rt")
except PackageNotFoundError:  # running from a source tree without an installed distribution
    __version__ = "0.0.0"


def create_app(config, *, turn_sinks=None, plugins=()):
    """The ASGI app for a `GatewayConfig` (or a path to a YAML/TOML file); serve it with any ASGI server."""
    # Imported by name at call time: the package root stays light, and the layers below never depend on it.
    app = importlib.import_module("bifrost_rt.runtime.app")
    return app.create_app(config, turn_sinks=turn_sinks, plugins=plugins)


__all__ = ["__version__", "create_app"]
