"""Renamed keyword arguments: the old name still works for one release, with a FutureWarning."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from .._errors import CpnnError

F = TypeVar("F", bound=Callable[..., Any])


def warn_renamed(old: str, new: str, *, since: str, removed_in: str) -> None:
    """Tell the caller's caller that ``old`` (a call as the user wrote it) is now spelled ``new``.

    The one wording of every rename, for :func:`renamed_arguments` and for uses of one keyword
    that moved to another (``predict(regions=<tiles table>)``).
    """
    warnings.warn(
        f"{old} is now {new} (renamed in cpnn {since}); the old form stops working in {removed_in}.",
        FutureWarning,
        stacklevel=3,
    )


def renamed_arguments(renames: dict[str, str], *, since: str, removed_in: str) -> Callable[[F], F]:
    """Accept each old keyword of ``renames`` (``{old: new}``) as its new name, warning once per call.

    The wrapped function keeps its signature and docstring (``functools.wraps``). Passing both the
    old and the new name is an error naming both. A ``FutureWarning`` (shown by default, as scanpy
    and anndata do for user-facing renames) says the new name and the release that drops the old.
    """

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise CpnnError(
                        f"{func.__qualname__}: pass {new}= only ({old}= is its old name, renamed in {since})."
                    )
                warn_renamed(f"{func.__qualname__}({old}=)", f"{new}=", since=since, removed_in=removed_in)
                kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
