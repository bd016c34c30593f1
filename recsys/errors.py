"""Domain errors. Each carries the name of the gRPC status it maps to.

`recsys` does not import grpc: `code` is the *name* of a `grpc.StatusCode` member, and the serving
layer's single interceptor turns it into a status. CLIs print `str(err)` and exit with `exit_code`.
"""

from __future__ import annotations

from typing import ClassVar


class RecsysError(Exception):
    """Base class. The message must name the field, the value and the fix."""

    code: ClassVar[str] = "INTERNAL"
    exit_code: ClassVar[int] = 1


class InvalidArgument(RecsysError):
    code = "INVALID_ARGUMENT"
    exit_code = 2


class NotFound(RecsysError):
    code = "NOT_FOUND"
    exit_code = 2


class Unavailable(RecsysError):
    """A dependency (the feature store) cannot be reached; the caller may retry."""

    code = "UNAVAILABLE"
    exit_code = 3


class Unauthenticated(RecsysError):
    code = "UNAUTHENTICATED"


class PermissionDenied(RecsysError):
    code = "PERMISSION_DENIED"


class ResourceExhausted(RecsysError):
    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(RecsysError):
    """The call is valid but the system is not in a state to run it (the message says what to do)."""

    code = "FAILED_PRECONDITION"


class DataValidationError(InvalidArgument):
    """A click log, item table or user table that cannot be used as given.

    Built with `where` (file, column, row) so every message has the same shape:
    ``log.csv: column 'timestamp', row 17: value '-5' is negative; fix: use epoch seconds >= 0``.
    """

    def __init__(self, file: str, problem: str, fix: str, column: str | None = None, row: int | None = None):
        where = [file]
        if column is not None:
            where.append(f"column {column!r}")
        if row is not None:
            where.append(f"row {row}")
        super().__init__(f"{', '.join(where)}: {problem}; fix: {fix}")
        self.file, self.column, self.row = file, column, row
        self.problem, self.fix = problem, fix

    def shifted(self, rows_before: int) -> DataValidationError:
        """The same error for a chunk that starts after `rows_before` rows of its file."""
        row = None if self.row is None else self.row + rows_before
        return DataValidationError(self.file, self.problem, self.fix, self.column, row)


class ArtifactError(RecsysError):
    """An artifact that is missing files, fails its checksums or has an unknown format version."""

    code = "FAILED_PRECONDITION"
    exit_code = 4
