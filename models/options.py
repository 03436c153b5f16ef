"""Request options several services share, checked by one function each so that every service accepts
the same values and words its refusal the same way (domain code: no grpc here).

- seeds (captioning sampling, SmoothGrad noise, class visualization, style transfer initialisation):
  ``0 <= seed < 2^63`` — every value an ``int64`` proto field can carry that numpy's ``SeedSequence``
  and ``torch.Generator.manual_seed`` both take; unset means "the server draws one and reports it".
- counts bounded by ``PIXELRPC_MAX_ITERATIONS`` (iterations, samples, integration steps).
- positive rates and factors (learning rates, magnification): finite and > 0.
"""

from __future__ import annotations

import math
import secrets
from typing import TypeVar

from pixelrpc.models.errors import FieldViolation, InvalidInput

SEED_LIMIT = 2**63
SEED_RANGE = "[0, 2^63)"
DRAWN_SEED_BITS = 62  # a drawn seed; any value in the range would do
T = TypeVar("T")


def seed_violation(seed: int | None, field: str) -> FieldViolation | None:
    """The violation of an out-of-range seed (None when ``seed`` is unset or valid)."""
    if seed is None or 0 <= int(seed) < SEED_LIMIT:
        return None
    return FieldViolation(field, f"seed must be in {SEED_RANGE}, got {int(seed)}")


def check_seed(seed: int | None, field: str) -> int | None:
    """``seed`` as an int (None stays None), or InvalidInput naming ``field``."""
    bad = seed_violation(seed, field)
    if bad is not None:
        raise InvalidInput(bad.description, violations=[bad])
    return None if seed is None else int(seed)


def resolve_seed(seed: int | None, field: str) -> int:
    """A checked seed, or a freshly drawn one when the request left it unset (reported back to the caller)."""
    checked = check_seed(seed, field)
    return secrets.randbits(DRAWN_SEED_BITS) if checked is None else checked


def check_count(value: int, field: str, *, minimum: int = 1, maximum: int,
                limit_name: str = "max_iterations") -> int:
    """A count from a request within ``[minimum, maximum]``, where ``maximum`` is this server's
    ``limit_name`` setting; InvalidInput naming the field, the bounds and the setting otherwise."""
    value = int(value)
    if not minimum <= value <= maximum:
        raise InvalidInput(f"{field} must be between {minimum} and {maximum} (this server's "
                           f"{limit_name}={maximum}), got {value}", field=field)
    return value


def check_positive(value: float, field: str) -> float:
    """A finite number > 0 (learning rates, magnification): NaN and infinity are refused by name."""
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise InvalidInput(f"{field} must be a finite number > 0, got {value!r}", field=field)
    return value


def with_defaults(cls: type[T], **given) -> T:
    """``cls(**given)`` without the arguments that are None, so the dataclass's own defaults fill them:
    a servicer passes ``samples=request.samples or None`` ("0 or unset means the default") and never
    restates a default."""
    return cls(**{name: value for name, value in given.items() if value is not None})
