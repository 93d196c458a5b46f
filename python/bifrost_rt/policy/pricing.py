"""The price table: shipped list prices (data/prices.json) with per-model overrides from the config.

A route's upstream name need not be a priced model (an Azure deployment is named by its owner), so the
configuration's `models:` entries say which priced model each upstream name serves.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources

import orjson

from bifrost_rt import _native
from bifrost_rt.config import ModelRoute

PRICE_FIELDS = (
    "input_text",
    "cached_text",
    "input_audio",
    "cached_audio",
    "input_image",
    "cached_image",
    "output_text",
    "output_audio",
    "per_minute",
)
_DATED_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def shipped_prices() -> dict[str, dict[str, float]]:
    return orjson.loads(resources.files("bifrost_rt").joinpath("data/prices.json").read_bytes())


def served_models(models: Mapping[str, str | ModelRoute]) -> tuple[dict[str, str], dict[str, str]]:
    """(upstream name → `priced_as`, upstream name → the client's name) for the routes that rename a model."""
    explicit: dict[str, str] = {}
    fallback: dict[str, str] = {}
    for name, route in models.items():
        if isinstance(route, str):
            continue
        upstream = route.model or name
        if route.priced_as:
            explicit[upstream] = route.priced_as
        elif upstream != name:
            fallback.setdefault(upstream, name)
    return explicit, fallback


class PriceTable:
    def __init__(
        self, overrides: Mapping[str, Mapping[str, float]] | None = None, models: Mapping[str, str | ModelRoute] | None = None
    ) -> None:
        """`models` is the configuration's routing table, read for the models that deployments serve."""
        self._explicit, self._fallback = served_models(models or {})
        table = shipped_prices()
        for model, fields in (overrides or {}).items():
            unknown = set(fields) - set(PRICE_FIELDS)
            if unknown:
                raise ValueError(f"prices.{model}: unknown price field(s) {sorted(unknown)}")
            table[model] = {**table.get(model, {}), **fields}
        self._prices = {model: _native.Prices(**fields) for model, fields in table.items()}

    def lookup(self, model: str | None) -> _native.Prices | None:
        """The model a route's `priced_as` names, the name itself, then the client's name for a renamed upstream
        model (an Azure deployment); each exact, then without a `provider/` prefix, then without a `-YYYY-MM-DD`
        snapshot suffix."""
        if not model:
            return None
        for candidate in (self._explicit.get(model), model, self._fallback.get(model)):
            prices = self._find(candidate) if candidate else None
            if prices is not None:
                return prices
        return None

    def _find(self, model: str) -> _native.Prices | None:
        for candidate in (model, model.rpartition("/")[2]):
            prices = self._prices.get(candidate) or self._prices.get(_DATED_SUFFIX.sub("", candidate))
            if prices is not None:
                return prices
        return None
