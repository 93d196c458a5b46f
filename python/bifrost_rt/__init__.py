"""bifrost_rt: a realtime-voice gateway for the OpenAI Realtime API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bifrost-rt")
except PackageNotFoundError:  # running from a source tree without an installed distribution
    __version__ = "0.0.0"


def create_app(config, *, turn_sinks=None, plugins=()):
    """The ASGI app for a `GatewayConfig` (or a path to a YAML/TOML file); serve it with any ASGI server."""
    from bifrost_rt.runtime.app import create_app as _create_app

    return _create_app(config, turn_sinks=turn_sinks, plugins=plugins)


__all__ = ["__version__", "create_app"]
