"""The errors that cross the Temporal boundary. Activities raise them; the planner
workflow rebuilds them from an activity's ``ApplicationError`` (by its type name), so the
API and the CLI catch the same classes without importing any activity."""

from __future__ import annotations

from collections.abc import Sequence


class LLMError(Exception):
    """A model call failed. ``retryable`` says whether Temporal may try again."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        kind: str = "LLMError",
        status: int | None = None,
    ):
        super().__init__(message)
        self.retryable = retryable
        self.kind = kind
        self.status = status


class NoModelFits(Exception):
    """No configured (enabled) model fits what was asked."""

    def __init__(self, message: str, *, capabilities: Sequence[str] = (), name: str | None = None):
        super().__init__(message)
        self.capabilities = list(capabilities)
        self.name = name
