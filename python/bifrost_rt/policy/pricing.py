"""The price table: shipped list prices (data/prices.json) with per-model overrides from the config.

A route's upstream name need not be a priced model (an Azure deployment is named by its owner): a route is priced
as the model its `models:` entry names (`priced_as`), else as its upstream model, else as the client's name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources

import orjson

from bifrost_rt import _native
from bifrost_rt.providers import Route

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


class PriceTable:
    def __init__(self, overrides: Mapping[str, Mapping[str, float]] | None = None) -> None:
        table = shipped_prices()
        for model, fields in (overrides or {}).items():
            unknown = set(fields) - set(PRICE_FIELDS)
            if unknown:
                raise ValueError(f"prices.{model}: unknown price field(s) {sorted(unknown)}")
            table[model] = {**table.get(model, {}), **fields}
        self._prices = {model: _native.Prices(**fields) for model, fields in table.items()}

    def for_route(self, route: Route, model: str | None) -> _native.Prices | None:
        """The prices of a session on `route` whose upstream model is `model`."""
        for candidate in (route.priced_as, model, route.requested_model):
            prices = self.lookup(candidate)
            if prices is not None:
                return prices
        return None

    def lookup(self, model: str | None) -> _native.Prices | None:
        """Exact name, then without a `provider/` prefix, then without a `-YYYY-MM-DD` snapshot suffix."""
        if not model:
            return None
        for candidate in (model, model.rpartition("/")[2]):
            prices = self._prices.get(candidate) or self._prices.get(_DATED_SUFFIX.sub("", candidate))
            if prices is not None:
                return prices
        return None
