"""The one error type of Bakehouse: a stable code, a sentence a user can act on, and whose fault.

Every refusal and failure, in the pipeline, the catalog and the builds app, is a ``BakehouseError``
(``PipelineError``, ``CatalogError`` and ``BuildRefused`` are its names in those places). The API's
exception handler and the pages' middleware turn any of them into an answer; a build records its
code. What each code means, whose problem it is and whether it may pass on retry lives in
``builds.pipeline.error_codes``.
"""

from __future__ import annotations

from typing import Any

from builds.pipeline.error_codes import STATUS_BY_KIND, ErrorKind, lookup


class BakehouseError(Exception):
    """Something failed or was refused.

    ``code`` is stable and machine-readable (``area.problem``, e.g. ``fetch.sha256-mismatch``);
    ``message`` is a sentence a user can act on. ``kind`` says whose problem it is (user, upstream,
    infrastructure) and ``retryable`` whether a later attempt may pass (a timeout, a 503); both
    default to the code's registry entry. ``status`` is the HTTP status of the answer (explicit,
    else the class's, else the registry's). ``output`` carries captured tool output, if any.
    """

    # Subclasses that always mean one status (not found, conflict) set it here.
    default_status: int | None = None

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool | None = None,
        kind: ErrorKind | str | None = None,
        status: int | None = None,
        output: str = "",
    ) -> None:
        super().__init__(f"{code}: {message}")
        entry = lookup(code)
        self.code = code
        self.message = message
        self.kind = ErrorKind(kind) if kind is not None else (entry.kind if entry else ErrorKind.USER)
        self.retryable = retryable if retryable is not None else (entry.retryable if entry else False)
        self.status = (
            status or self.default_status or (entry.status if entry else None) or STATUS_BY_KIND[self.kind]
        )
        self.output = output

    @property
    def is_users_fault(self) -> bool:
        return self.kind == ErrorKind.USER

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep every attribute across pickling (Celery moves exceptions between processes), for
        # subclasses with their own constructor arguments too.
        return (_rebuild, (type(self), self.code, self.message, dict(self.__dict__)))


def _rebuild(cls: type[BakehouseError], code: str, message: str, state: dict[str, Any]) -> BakehouseError:
    error = cls.__new__(cls)
    Exception.__init__(error, f"{code}: {message}")
    error.__dict__.update(state)
    return error


class PipelineError(BakehouseError):
    """A pipeline step failed."""
