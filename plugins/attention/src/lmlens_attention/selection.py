"""Which layers and heads a request names: negative indices count from the end."""

from __future__ import annotations

from lmlens import InvalidParamsError


def pick(values: list[int] | None, size: int, what: str, method: str) -> list[int]:
    """Validated, de-duplicated indices in ``range(size)``; ``None`` means all of them."""
    if values is None:
        return list(range(size))
    picked = []
    for v in values:
        if not -size <= v < size:
            raise InvalidParamsError(
                f"{what} {v} does not exist; the model has {size} {what}s",
                field=f"params.{method}.{what}s",
            )
        picked.append(v % size)
    if not picked:
        raise InvalidParamsError(f"ask for at least one {what}", field=f"params.{method}.{what}s")
    return list(dict.fromkeys(picked))


def check_range(value: float, low: float, high: float, field: str, method: str) -> None:
    if not low <= value <= high:
        raise InvalidParamsError(
            f"{field} must be between {low} and {high}, not {value}", field=f"params.{method}.{field}"
        )
