"""Dimensions of a search space: a choice list or a numeric range, drawn by name.

A dimension answers three questions: how Optuna draws it (define-by-run ``suggest_*``),
which values a grid walk visits (:meth:`Dimension.grid`, ``None`` when continuous) and how
it is written back to a space file (:meth:`Dimension.to_spec`). A dimension with a single
value is *fixed*: the search space never suggests it, so a study's parameters list exactly
the axes that were searched.

In a space file a dimension is a value (fixed), a list (choices) or a mapping
``{low, high, step}`` (a range; a float range without ``step`` is continuous).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .errors import SpaceError

if TYPE_CHECKING:
    import optuna

RANGE_KEYS = ("low", "high", "step")


def _anything(value: Any) -> str | None:
    return None


@dataclass(frozen=True)
class Domain:
    """The values one axis accepts: a Python type and a check returning a complaint or ``None``."""

    type: type
    check: Callable[[Any], str | None] = _anything

    def coerce(self, value: Any, field: str) -> Any:
        """``value`` as this domain's type, or a :class:`SpaceError` naming ``field``."""
        if self.type is float and type(value) is int:
            value = float(value)
        if type(value) is not self.type:  # exact: a YAML ``true`` is not the integer 1
            raise SpaceError(field, f"{value!r} is not a {self.type.__name__}")
        problem = self.check(value)
        if problem:
            raise SpaceError(field, problem)
        return value


def positive_int(value: int) -> str | None:
    return None if value >= 1 else f"{value!r} is not a positive integer"


def positive(value: float) -> str | None:
    return None if value > 0 else f"{value!r} is not > 0"


def unit_interval(value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else f"{value!r} is outside [0, 1]"


def between(low: int, high: int) -> Callable[[int], str | None]:
    """An integer from ``low`` to ``high``: the range a real search needs (a bigger value is a
    typo that would only fail once memory or time runs out)."""
    def check(value: int) -> str | None:
        return None if low <= value <= high else f"{value!r} is outside {low}..{high}"

    return check


def one_of(options: Sequence[str]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in options else f"{value!r} is not one of {', '.join(options)}"

    return check


class Dimension(ABC):
    """One searchable axis."""

    @abstractmethod
    def grid(self) -> Sequence[Any] | None:
        """Every value, in order; ``None`` for a continuous range."""

    @abstractmethod
    def suggest(self, trial: "optuna.Trial", name: str) -> Any:
        """Draw a value through Optuna's define-by-run API under parameter ``name``."""

    @abstractmethod
    def to_spec(self) -> Any:
        """The space-file form that parses back to this dimension."""

    @property
    def is_fixed(self) -> bool:
        values = self.grid()
        return values is not None and len(values) == 1


@dataclass(frozen=True)
class Choice(Dimension):
    """A categorical axis (also used for ordered integers: Optuna's TPE treats them as labels)."""

    values: tuple[Any, ...]

    def grid(self) -> tuple[Any, ...]:
        return self.values

    def suggest(self, trial: "optuna.Trial", name: str) -> Any:
        return trial.suggest_categorical(name, list(self.values))

    def to_spec(self) -> Any:
        return self.values[0] if len(self.values) == 1 else list(self.values)

    def __str__(self) -> str:
        return "[" + ", ".join(str(v) for v in self.values) + "]"


@dataclass(frozen=True)
class IntRange(Dimension):
    """Integers ``low, low + step, ..., <= high``."""

    low: int
    high: int
    step: int = 1

    def grid(self) -> range:
        return range(self.low, self.high + 1, self.step)

    def suggest(self, trial: "optuna.Trial", name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step)

    def to_spec(self) -> dict[str, int]:
        return {"low": self.low, "high": self.high, **({"step": self.step} if self.step != 1 else {})}

    def __str__(self) -> str:
        return f"int [{self.low}, {self.high}]" + (f" step {self.step}" if self.step != 1 else "")


@dataclass(frozen=True)
class FloatRange(Dimension):
    """Floats in ``[low, high]``: continuous, or on a ``step`` grid from ``low``."""

    low: float
    high: float
    step: float | None = None

    def grid(self) -> tuple[float, ...] | None:
        if self.step is None:
            return None
        # Decimal arithmetic so 0.1-steps land on 0.3, not 0.30000000000000004.
        low, high, step = (Decimal(repr(v)) for v in (self.low, self.high, self.step))
        return tuple(float(low + k * step) for k in range(int((high - low) // step) + 1))

    def suggest(self, trial: "optuna.Trial", name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, step=self.step)

    def to_spec(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high, **({"step": self.step} if self.step is not None else {})}

    def __str__(self) -> str:
        return f"float [{self.low:g}, {self.high:g}]" + (f" step {self.step:g}" if self.step is not None else "")


def parse_dimension(raw: Any, domain: Domain, field: str) -> Dimension:
    """A dimension from its space-file form: a value, a list of choices or ``{low, high, step}``."""
    if isinstance(raw, Mapping):
        return _parse_range(raw, domain, field)
    if isinstance(raw, (list, tuple)):
        if not raw:
            raise SpaceError(field, "empty choice list")
        values = tuple(domain.coerce(value, field) for value in raw)
        repeated = [v for i, v in enumerate(values) if v in values[:i]]
        if repeated:
            raise SpaceError(field, f"{repeated[0]!r} is listed twice")
        return Choice(values)
    return Choice((domain.coerce(raw, field),))


def parse_per_stage(raw: Any, domain: Domain, field: str, num_stages: int) -> tuple[Dimension | None, ...]:
    """One dimension per stage; ``null`` entries leave that stage at the base config's value."""
    if not isinstance(raw, (list, tuple)) or len(raw) != num_stages:
        raise SpaceError(field, f"expected a list with one entry per stage ({num_stages}), got {raw!r}")
    return tuple(
        None if entry is None else parse_dimension(entry, domain, f"{field}[{i}]") for i, entry in enumerate(raw)
    )


def _parse_range(raw: Mapping[str, Any], domain: Domain, field: str) -> Dimension:
    if domain.type not in (int, float):
        raise SpaceError(field, "a range needs a numeric axis; give a list of choices")
    check_keys(raw, RANGE_KEYS, field)
    for key in ("low", "high"):
        if key not in raw:
            raise SpaceError(field, f"a range needs '{key}'")
    low = domain.coerce(raw["low"], field)
    high = domain.coerce(raw["high"], field)
    if low > high:
        raise SpaceError(field, f"low {low!r} is above high {high!r}")
    step = raw.get("step")
    if domain.type is int:
        return IntRange(low, high, 1 if step is None else Domain(int, positive_int).coerce(step, f"{field}.step"))
    return FloatRange(low, high, None if step is None else Domain(float, positive).coerce(step, f"{field}.step"))


def check_keys(data: Mapping[str, Any], allowed: Sequence[str], field: str | None) -> None:
    """Reject keys outside ``allowed``, naming the first unknown one and listing the allowed."""
    unknown = sorted(str(key) for key in data if key not in allowed)
    if unknown:
        where = f"{field}.{unknown[0]}" if field else unknown[0]
        raise SpaceError(where, f"unknown key; allowed: {', '.join(allowed)}")
