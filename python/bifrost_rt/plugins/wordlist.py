"""A word-list guardrail: refuses turns whose user text or audio transcript contains a listed word.

    plugins:
      - use: bifrost_rt.plugins.wordlist:WordListGuardrail
        options: {words: ["wire transfer", "password"], action: deny}

It sees the inputs that have arrived when the turn starts. With server VAD a spoken transcript can arrive after
the provider has already started its answer; sessions that must screen speech create responses themselves
(`turn_detection.create_response: false`) so the transcript is in before `response.create`.
"""

from __future__ import annotations

import re
from typing import Literal

from bifrost_rt.plugins import Decision, Plugin, TurnRequest


class WordListGuardrail(Plugin):
    name = "wordlist"

    def __init__(self, words: list[str], action: Literal["deny", "disconnect"] = "deny", message: str | None = None) -> None:
        if not words:
            raise ValueError("words must not be empty")
        if action not in ("deny", "disconnect"):
            raise ValueError("action must be 'deny' or 'disconnect'")
        # Whole words and phrases, case-insensitive, any whitespace between the words of a phrase.
        alternatives = "|".join(r"\s+".join(map(re.escape, word.split())) for word in words)
        self._pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
        self._action = action
        self._message = message or "The request contains content that is not allowed."

    async def pre_turn(self, request: TurnRequest) -> Decision | None:
        for turn_input in request.inputs:
            text = turn_input.get("text")
            if turn_input.get("kind") in ("text", "audio") and text and self._pattern.search(text):
                if self._action == "disconnect":
                    return Decision.disconnect(self._message, code="content_blocked")
                return Decision.deny(self._message, code="content_blocked")
        return None
