"""What went wrong, in one line, for operators reading a log or a start-up refusal."""

from __future__ import annotations

from sqlalchemy import exc


def describe_cause(error: BaseException) -> str:
    """The message of the innermost cause of ``error``, on one line.

    Wrappers (``Unavailable``, SQLAlchemy's ``DBAPIError``) say little; the driver's own
    error says what an operator can act on, e.g. "database or disk is full".
    """
    while error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, exc.DBAPIError) and isinstance(error.orig, BaseException):
        error = error.orig
    return " ".join(str(error).split()) or type(error).__name__
