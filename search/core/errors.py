"""Which failures are the user's to fix: the command lines' exit status 2 against 1.

Every command line (``python -m search``, ``python -m experiments``) answers an error with one
line; bad input - a ValueError, or an error marked :class:`UsageError` such as a study another
driver holds - exits 2, a run that cannot go on exits 1.
"""
from __future__ import annotations

EXIT_USAGE = 2


class UsageError(Exception):
    """Mixed into an error that is not a ValueError but that the user resolves (pick another
    study, wait): the command lines exit 2 on it."""


def usage_error(error: Exception) -> bool:
    """Bad input (exit 2): a ValueError, or a :class:`UsageError`."""
    return isinstance(error, (ValueError, UsageError))
