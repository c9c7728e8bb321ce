"""What a setting's type annotation says: the value's kind, and a list's element type (for parsing and checks)."""
from __future__ import annotations

import typing

__all__ = ["kind_of", "element_of"]


def kind_of(tp) -> type:
    """``Optional[X]`` -> X; anything else unchanged."""
    if typing.get_origin(tp) is typing.Union:
        return [a for a in typing.get_args(tp) if a is not type(None)][0]
    return tp


def element_of(tp):
    """The element type of ``List[X]`` / ``Optional[List[X]]``, else None."""
    kind = kind_of(tp)
    return typing.get_args(kind)[0] if typing.get_origin(kind) is list else None
