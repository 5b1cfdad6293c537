"""Input sizes: the named buckets, their duration multipliers, and the routing timeout factor.

Two scales come from the seed and are kept exactly:

* ``estimate_duration`` multiplies the base duration by the bucket's factor: small 0.5, normal 1.0,
  large 2.0, very_large 5.0.
* ``routing_recommendation`` scales its timeout by the raw input size: > 10_000 gives 3.0,
  > 1_000 gives 1.5, anything else 1.0.

An integer size (in the caller's input units, the same units the routing context uses) falls into a
bucket with thresholds that agree with the routing scale: up to 100 is small, up to 1_000 normal, up to
10_000 large, above that very_large.
"""

from __future__ import annotations

from typing import Literal, get_args

from dspex.exceptions import RegistryQueryError

__all__ = [
    "SIZE_FACTORS",
    "InputSize",
    "SizeBucket",
    "size_bucket",
    "timeout_factor",
]

SizeBucket = Literal["small", "normal", "large", "very_large"]
InputSize = SizeBucket | int

#: The seed's duration multiplier of each bucket.
SIZE_FACTORS: dict[str, float] = {"small": 0.5, "normal": 1.0, "large": 2.0, "very_large": 5.0}
_BUCKETS: tuple[str, ...] = get_args(SizeBucket)

# Upper bounds (inclusive) of the integer sizes in each bucket; above the last is very_large.
_INT_BOUNDS: tuple[tuple[int, SizeBucket], ...] = ((100, "small"), (1_000, "normal"), (10_000, "large"))


def size_bucket(input_size: InputSize | str) -> SizeBucket:
    """The bucket of a named or integer input size.

    Args:
        input_size: ``"small"``, ``"normal"``, ``"large"``, ``"very_large"`` or a non-negative int.

    Raises:
        RegistryQueryError: An unknown name, a negative number, or a value of another type.
    """
    if isinstance(input_size, str):
        if input_size in SIZE_FACTORS:
            return input_size  # type: ignore[return-value]
        raise RegistryQueryError(
            f"unknown input size {input_size!r}; valid sizes: {', '.join(_BUCKETS)} or an int"
        )
    # bool is an int subclass; True as a size is a bug in the caller, not size 1.
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        if input_size < 0:
            raise RegistryQueryError(f"input size must be >= 0, got {input_size}")
        for bound, bucket in _INT_BOUNDS:
            if input_size <= bound:
                return bucket
        return "very_large"
    raise RegistryQueryError(
        f"input size must be one of {', '.join(_BUCKETS)} or an int, got {type(input_size).__name__} {input_size!r}"
    )


def timeout_factor(input_size: int | None) -> float:
    """The seed's timeout multiplier for a raw input size (``None`` counts as small).

    Args:
        input_size: The size from the routing context.
    """
    if input_size is None:
        return 1.0
    if input_size > 10_000:
        return 3.0
    if input_size > 1_000:
        return 1.5
    return 1.0
