"""The session UI (`/ui`): server-rendered pages over the turn log, the live registry and governance."""

from bifrost_rt.http.ui.pages import PREFIX, SessionUi

__all__ = ["PREFIX", "SessionUi"]
