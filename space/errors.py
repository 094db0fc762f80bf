"""`SpaceError`: a bad search-space definition, located by file and field.

Space files are written by hand, so every complaint names where to look
(``FILE: field 'window_size[2]': 0 is < 1``) and fits on one line; the CLI prints it and
exits with status 2.
"""
from __future__ import annotations


class SpaceError(ValueError):
    """A search-space definition that cannot be used.

    Args:
        field: dotted path of the offending key (``"dimensions.alpha"``), or ``None``.
        message: what is wrong, without the location.
        source: the file the definition came from, or ``None`` for in-memory data.
    """

    def __init__(self, field: str | None, message: str, source: str | None = None) -> None:
        self.field = field
        self.message = message
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [part for part in (self.source, self.field and f"field '{self.field}'") if part]
        return ": ".join([*where, self.message])

    def located(self, source: str) -> "SpaceError":
        """The same error attributed to ``source`` (kept when already set)."""
        return SpaceError(self.field, self.message, self.source or source)
