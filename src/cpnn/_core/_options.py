"""Options records: each option declared once, as a field of the frozen record its consumer reads.

A field carries its default, its type (a ``Literal`` lists the allowed values) and a one-line
``doc`` (``metadata={"doc": ...}``); bounds go in the metadata too (``low``, ``high``, ``strict``,
``minimum``). :meth:`Options.make` validates and coerces values by those declarations, so no
option is checked in two places, and :func:`options_doc` writes the docstring lines of a record.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args, get_origin

from .._errors import CpnnError
from ._validate import check_int, check_number


def option(default: Any, doc: str, **rules: Any) -> Any:
    """A record field: ``default``, a one-line ``doc``, and bounds (``low``, ``high``, ``strict``, ``minimum``).

    ``stored=False`` marks a run setting (where the data is, how to read it) that is not part of
    the fitted model's record.
    """
    if isinstance(default, list | dict | set):
        raise TypeError("option defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata={"doc": doc, **rules})


@dataclass(frozen=True)
class Options:
    """Base of the options records (frozen; built and checked with :meth:`make`)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Write the record's fields (each one's ``doc``) into its docstring, as a Parameters section."""
        super().__init_subclass__(**kwargs)
        docs: dict[str, str] = {}
        for parent in reversed(cls.__mro__[1:]):
            if dataclasses.is_dataclass(parent):
                docs.update({f.name: f.metadata["doc"] for f in fields(parent) if "doc" in f.metadata})
        for name in inspect.get_annotations(cls):
            value = cls.__dict__.get(name)
            if isinstance(value, dataclasses.Field) and "doc" in value.metadata:
                docs[name] = value.metadata["doc"]
        if docs:
            lines = [f"{name}\n    {doc} Default ``{_default_of(cls, name)!r}``." for name, doc in docs.items()]
            cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n\nParameters\n----------\n" + "\n".join(lines) + "\n"

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names of this record."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def make(cls, values: dict[str, Any] | None = None, *, argument: str = "", **more: Any) -> Any:
        """The record from ``values`` (unset fields keep their defaults), each value checked by its declaration.

        ``argument``: the keyword the values came in (``"head_kwargs"``), named in the error for an
        unknown key, with the record's fields.
        """
        given = {**(values or {}), **more}
        unknown = sorted(set(given) - set(cls.names()))
        if unknown:
            where = f"{argument}=" if argument else cls.__name__
            raise CpnnError(f"{where} has no option {unknown}; its options are {list(cls.names())}.")
        hints = typing.get_type_hints(cls)
        checked = {}
        for f in fields(cls):
            if f.name in given:
                checked[f.name] = check_value(f.name, given[f.name], hints[f.name], f.metadata)
        return cls(**checked)

    def replace(self, **values: Any) -> Any:
        """A copy with ``values`` checked and set."""
        return type(self).make({**self.as_dict(stored_only=False), **values})

    def as_dict(self, *, stored_only: bool = True) -> dict[str, Any]:
        """The fields by name (without the run settings, ``stored=False``, unless ``stored_only=False``)."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if not stored_only or f.metadata.get("stored", True)
        }


def _default_of(cls: type, name: str) -> Any:
    """The default of field ``name`` of ``cls`` (a ``dataclasses.Field`` not yet processed, or a parent's)."""
    for klass in cls.__mro__:
        value = klass.__dict__.get(name, dataclasses.MISSING)
        if isinstance(value, dataclasses.Field):
            return value.default
        if value is not dataclasses.MISSING:
            return value
    return None


def check_value(name: str, value: Any, hint: Any, rules: Any) -> Any:
    """``value`` checked against a field's type ``hint`` and its ``rules``; an error names ``name`` and the fix."""
    args = get_args(hint)
    optional = get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    if value is None:
        if optional or hint is type(None):
            return None
        raise CpnnError(f"{name}=None is not allowed; pass a value or leave {name} out for its default.")
    inner = [a for a in args if a is not type(None)] if optional else [hint]
    base = inner[0] if len(inner) == 1 else hint
    if get_origin(base) is Literal:
        allowed = get_args(base)
        if isinstance(value, bool) or value not in allowed:
            raise CpnnError(f"{name}={value!r}; use one of {[None] * optional + list(allowed)}.")
        return value
    if base is bool:
        if isinstance(value, str) or value not in (0, 1):
            raise CpnnError(f"{name}={value!r} must be True or False.")
        return bool(value)
    if base is int:
        return check_int(name, value, minimum=rules.get("minimum", 1))
    if base is float:
        return check_number(
            name, value, low=rules.get("low"), high=rules.get("high"), strict=rules.get("strict", False)
        )
    if get_origin(base) is tuple:
        items = (value,) if isinstance(value, int) else tuple(value)
        return tuple(check_int(name, v, minimum=rules.get("minimum", 1)) for v in items)
    if base is str and not isinstance(value, str):
        raise CpnnError(f"{name}={value!r} must be a string.")
    return value


def options_doc(record: type[Options], *, indent: str = "    ") -> list[str]:
    """Docstring lines (``name``: type, default: doc) of a record's fields, for the functions that take it."""
    hints = typing.get_type_hints(record)
    lines = []
    for f in fields(record):
        kind = _type_text(hints[f.name])
        lines.append(f"{indent}``{f.name}`` ({kind}, default ``{f.default!r}``)")
        lines.append(f"{indent}    {f.metadata['doc']}")
    return lines


def _type_text(hint: Any) -> str:
    if get_origin(hint) is Literal:
        return " | ".join(repr(a) for a in get_args(hint))
    args = get_args(hint)
    if get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_text(a) for a in args)
    if hint is type(None):
        return "None"
    if get_origin(hint) is tuple:
        return "tuple of int"
    return getattr(hint, "__name__", str(hint))
