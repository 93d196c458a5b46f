"""The public surfaces are what they say they are: the package root and the plugin API."""

from __future__ import annotations

import bifrost_rt
import bifrost_rt.plugins


def test_the_package_root_exports_the_version_and_create_app_only():
    assert sorted(bifrost_rt.__all__) == ["__version__", "create_app"]


def test_the_plugin_api_exports_what_a_plugin_needs():
    assert sorted(bifrost_rt.plugins.__all__) == ["Decision", "Plugin", "SessionInfo", "TurnRecord", "TurnRequest"]
    for name in bifrost_rt.plugins.__all__:
        assert getattr(bifrost_rt.plugins, name).__name__ == name


def test_a_plugin_written_against_the_api_loads_by_import_path():
    from bifrost_rt.policy.hooks import load_plugin

    plugin = load_plugin("bifrost_rt.plugins.wordlist:WordListGuardrail", {"words": ["forbidden"]})
    assert isinstance(plugin, bifrost_rt.plugins.Plugin)
