"""A manifest's ``serving`` section, parsed once into a typed ``ServingConfig``.

``metadata["serving"]`` lets a model ask for per-model serving limits and defaults; a server's explicit
settings win over it (``ServingConfig.setting``). Every field is optional:

- ``device``: where to load the model unless the server's device is explicit (a GPU the process does
  not have is ignored).
- ``max_concurrency``: calls of this model running at once beyond which RESOURCE_EXHAUSTED (0: no limit).
- ``timeout_s``: caps every call's deadline (0: no cap).
- ``max_batch_size``, ``max_batch_delay_ms``: the dynamic batching of captioning.
- ``decode_dtype``: captioning's decoding dtype, ``float32`` or ``float64``.

A value of the wrong type is ``ModelCorrupt`` when the model loads; a ``decode_dtype`` other than the
two is FAILED_PRECONDITION when it is used (``decode_dtype_for``), as a server setting may override it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pixelrpc.models.errors import FailedPrecondition, ModelCorrupt, clip

SERVING_KEY = "serving"
DECODE_DTYPES = ("float32", "float64")
DECODE_DTYPE_SETTING = "PIXELRPC_DECODE_DTYPE"


@dataclass(frozen=True)
class ServingConfig:
    """A model's ``serving`` section; None (or 0 for the limits) where the manifest sets nothing."""

    device: str | None = None
    max_concurrency: int = 0
    timeout_s: float = 0.0
    max_batch_size: int | None = None
    max_batch_delay_ms: float | None = None
    decode_dtype: str | None = None

    @classmethod
    def from_metadata(cls, metadata: Mapping | None, ref: str = "this model") -> ServingConfig:
        """Parse ``metadata["serving"]`` (absent or empty: all defaults); ModelCorrupt naming the field
        of a value of the wrong type."""
        raw = (metadata or {}).get(SERVING_KEY) or {}
        if not isinstance(raw, Mapping):
            raise ModelCorrupt(f"model {ref}'s metadata[{SERVING_KEY!r}] must be an object, got {clip(repr(raw))}")

        def number(key: str, kind: type, unset=None):
            value = raw.get(key)
            if value is None:
                return unset
            try:
                return kind(value or 0)
            except (TypeError, ValueError):
                raise ModelCorrupt(f"model {ref}'s serving.{key} is {clip(repr(value))}: expected a number") from None

        device, dtype = raw.get("device"), raw.get("decode_dtype")
        return cls(device=str(device) if device else None,
                   max_concurrency=number("max_concurrency", int, 0),
                   timeout_s=number("timeout_s", float, 0.0),
                   max_batch_size=number("max_batch_size", int),
                   max_batch_delay_ms=number("max_batch_delay_ms", float),
                   decode_dtype=str(dtype) if dtype else None)

    def setting(self, key: str, explicit: object, default):
        """A per-model serving setting: ``explicit`` (a server setting, when a number > 0) > this
        section's ``key`` > ``default``."""
        if isinstance(explicit, int | float) and not isinstance(explicit, bool) and explicit > 0:
            return explicit
        value = getattr(self, key)
        return default if value is None else value

    def decode_dtype_for(self, explicit: str, ref: str) -> str | None:
        """The decoding dtype: ``explicit`` (the server's setting) > this section's > None (the model's own).
        FailedPrecondition naming where a value other than ``DECODE_DTYPES`` came from."""
        dtype = explicit or self.decode_dtype or None
        if dtype not in (None, *DECODE_DTYPES):
            where = DECODE_DTYPE_SETTING if explicit else f"model {ref}'s serving.decode_dtype"
            raise FailedPrecondition(f"{where} is {clip(str(dtype))!r}: expected float32 or float64")
        return dtype
