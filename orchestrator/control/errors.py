"""Act: the project's error vocabulary at the adapter boundary; adapters translate Ray/HTTP/Kubernetes errors into it.

Two families, as in kopf (``TemporaryError(delay=…)`` / ``PermanentError``), so the control loop needs only two
``except`` clauses:

- :class:`TransientError` (and its kinds :class:`ConflictError`, :class:`CapacityUnavailableError`): the same call
  may succeed later; ``delay_s`` says how long to wait before retrying.
- :class:`PermanentError` (and its kind :class:`NotFoundError`): retrying the same call cannot help until
  something else changes (configuration, deployment, code).

Adapters raise these with ``raise … from e`` so the original exception stays in the traceback. Only the loop
catches broadly, logs, and backs off.
"""

from __future__ import annotations


class ControlError(Exception):
    """Base of every error an actuator or observer adapter raises on purpose."""


class TransientError(ControlError):
    """Retry later: the backend is unreachable, overloaded or still starting (timeouts, 5xx, connection errors)."""

    def __init__(self, message: str, delay_s: float = 5.0) -> None:
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}")
        super().__init__(message)
        self.delay_s = delay_s


class ConflictError(TransientError):
    """The object changed under us (concurrent writer, resource version); re-read and retry on the next tick."""

    def __init__(self, message: str, delay_s: float = 0.0) -> None:
        super().__init__(message, delay_s)


class CapacityUnavailableError(TransientError):
    """The backend cannot provide more nodes right now (quota, stock-out, local limit); try later or elsewhere."""

    def __init__(self, message: str, delay_s: float = 30.0) -> None:
        super().__init__(message, delay_s)


class PermanentError(ControlError):
    """Retrying the same call cannot succeed: bad request, disabled feature, misconfiguration."""


class NotFoundError(PermanentError):
    """The pool, application, deployment or node the call names does not exist."""


__all__ = [
    "CapacityUnavailableError",
    "ConflictError",
    "ControlError",
    "NotFoundError",
    "PermanentError",
    "TransientError",
]
