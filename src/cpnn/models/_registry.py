"""Registries by name, in the spirit of decoupler's method dictionaries: one class, one line."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .._errors import CpnnError

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes of one kind (heads, encoders) by name.

    Parameters
    ----------
    kind
        What is registered, for messages (``"head"``).
    argument
        The option that names a member (``"head"`` of :func:`cpnn.tl.fit`).
    register
        The function that registers one, for messages (default ``cpnn.models.register_<kind>``).
    """

    def __init__(self, kind: str, argument: str, register: str | None = None) -> None:
        self.kind = kind
        self.argument = argument
        self.register_name = register or f"cpnn.models.register_{kind}"
        self._members: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding a class under ``name`` (its ``name`` attribute is set to it)."""

        def add(cls: T) -> T:
            if not name or not isinstance(name, str):
                raise CpnnError(f"A registered {self.kind} needs a non-empty name, got {name!r}.")
            cls.name = name  # type: ignore[attr-defined]
            self._members[name] = cls
            return cls

        return add

    def get(self, name: str) -> T:
        """The class registered as ``name``, or an error listing the registered names."""
        if name not in self._members:
            raise CpnnError(
                f"{self.argument}={name!r} is not a registered {self.kind}; choose one of {self.names()} "
                f"or register one with {self.register_name}."
            )
        return self._members[name]

    def remove(self, name: str) -> None:
        """Take ``name`` out of the registry (e.g. a member registered for a test)."""
        self._members.pop(name, None)

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._members)

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self._members)})"
