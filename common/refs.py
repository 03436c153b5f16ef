"""Model references, ``NAME`` or ``NAME:VERSION``: the one parser, used by the client library, the CLI
and the server (``pixelrpc.models.registry.parse_ref`` adds the registry's name rules to it).

``pixelrpc.common`` holds what every side shares and is light: pure Python, no torch, no protobuf,
no grpc. This module cannot live in ``pixelrpc.models`` (the client library must not import the
server side) nor in ``pixelrpc.clients`` (the domain must not import the client) nor beside the protos
in ``pixelrpc.v1`` (the domain never touches the wire format).
"""

from __future__ import annotations

import re
from collections.abc import Callable

# A version is 1 to 9 ASCII digits (0: the default version), the registry's MAX_VERSION at most.
VERSION_PATTERN = re.compile(r"[0-9]{1,9}")
REF_FORMAT = "NAME or NAME:VERSION"


def split_ref(ref: str, *, check_name: Callable[[str], object] | None = None,
              error: Callable[[str], Exception] = ValueError,
              shown: Callable[[str], str] = repr) -> tuple[str, int]:
    """``"name"`` -> ``("name", 0)``; ``"name:3"`` -> ``("name", 3)``; ``""`` -> ``("", 0)`` (the default
    model). Version 0 means the default version.

    - check_name: called with the name before the version is read (the server's name rules).
    - error: builds the exception of a malformed version (ValueError; the server's InvalidInput).
    - shown: how the reference is quoted in that message (the server clips it).
    """
    name, _, version = ref.partition(":")
    if check_name is not None:
        check_name(name)
    if not version:
        return name, 0
    if not VERSION_PATTERN.fullmatch(version):
        raise error(f"invalid model reference {shown(ref)}: expected {REF_FORMAT}")
    return name, int(version)
