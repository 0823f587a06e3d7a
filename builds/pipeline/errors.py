"""The one error type of the pipeline: a stable code plus a sentence a user can act on."""

from __future__ import annotations


class PipelineError(Exception):
    """A pipeline step failed.

    ``code`` is stable and machine-readable (``area.problem``, e.g. ``fetch.sha256-mismatch``);
    the message is a sentence a user can act on. ``retryable`` marks infrastructure trouble
    (a timeout, a 503) that may pass on a later attempt; user errors (a bad recipe, a wrong pin,
    a hostile archive) are never retried. ``output`` carries captured tool output, if any.
    """

    def __init__(self, code: str, message: str, *, retryable: bool = False, output: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.output = output

    def __reduce__(self) -> tuple[object, ...]:
        # Keep keyword arguments across pickling (Celery moves exceptions between processes).
        return (_rebuild, (self.code, self.message, self.retryable, self.output))


def _rebuild(code: str, message: str, retryable: bool, output: str) -> PipelineError:
    return PipelineError(code, message, retryable=retryable, output=output)
