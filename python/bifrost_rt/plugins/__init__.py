"""The plugin API: what a plugin may import, and the plugins shipped with bifrost_rt.

A plugin subclasses `Plugin` and is named in the configuration by import path (`package.module:ClassName`).
Everything a plugin needs is exported here; the modules behind it may move between releases, this surface may not.
"""

from bifrost_rt.policy.hooks import Decision, Plugin, SessionInfo, TurnRequest
from bifrost_rt.records import TurnRecord

__all__ = ["Decision", "Plugin", "SessionInfo", "TurnRecord", "TurnRequest"]
