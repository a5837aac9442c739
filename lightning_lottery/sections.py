"""A recipe section's nested settings: a mapping from YAML turned into its typed, frozen dataclass.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Inner:
    ...     x: int = 1
    >>> @dataclass(frozen=True)
    ... class Outer:
    ...     inner: Inner | dict = None
    >>> o = Outer({"x": 2}); nested(o, "inner", Inner, "demo"); o.inner
    Inner(x=2)
"""

from __future__ import annotations

from typing import Any

__all__ = ["nested"]


def nested(owner: Any, key: str, cls: type, section: str, *, strict: bool = False) -> None:
    """Replace ``owner.key``, when it is a mapping, by ``cls(**mapping)``; an unknown key is a ``ValueError`` naming
    ``section.key``. ``strict``: any other value but ``None`` or a ``cls`` is refused too."""
    value = getattr(owner, key)
    if isinstance(value, dict):
        try:
            object.__setattr__(owner, key, cls(**value))
        except TypeError as err:
            raise ValueError(f"{section}.{key}: {err}") from None
    elif strict and value is not None and not isinstance(value, cls):
        raise ValueError(f"{section}.{key} must be a mapping of its settings, got {value!r}")
