"""How the daemon's plain modules tell the user something, without knowing the protocol."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

Level = Literal["error", "warning", "info"]
# (level, message, popup): the server sends window/showMessage for popups, window/logMessage otherwise.
Notify = Callable[[Level, str, bool], None]
