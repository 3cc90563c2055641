"""Frozen, slotted dataclasses built at half the cost of their __init__, for loops over many rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any, TypeVar, cast

T = TypeVar("T")


def slot_constructor(cls: type[T]) -> Callable[..., T]:
    """A positional constructor for a frozen, slotted dataclass at half the cost of its __init__.

    A frozen dataclass's __init__ sets every field with ``object.__setattr__(self, "name", v)``,
    a lookup by name each time: ~1.4 µs for a 9-field Invoice, and a planning pass over 100k
    cases builds ~600k such objects. This one calls each slot's descriptor directly. It is
    generated with exec, as dataclasses generates __init__ itself, and refuses a class whose
    __init__ would do more than set its fields (no slots, __post_init__, init=False, factories).
    """
    found = fields(cast(Any, cls))
    if (
        "__slots__" not in cls.__dict__
        or hasattr(cls, "__post_init__")
        or any(not f.init or f.default_factory is not MISSING for f in found)
    ):
        raise TypeError(f"{cls.__name__}: not a plain slotted dataclass")
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls}
    params, body = [], ["    obj = new(cls)"]
    for i, field in enumerate(found):
        namespace[f"set{i}"] = getattr(cls, field.name).__set__
        if field.default is MISSING:
            params.append(f"v{i}")
        else:
            namespace[f"default{i}"] = field.default
            params.append(f"v{i}=default{i}")
        body.append(f"    set{i}(obj, v{i})")
    source = f"def make({', '.join(params)}, /):\n" + "\n".join(body) + "\n    return obj\n"
    exec(source, namespace)
    make = namespace["make"]
    make.__qualname__ = make.__name__ = f"make_{cls.__name__}"
    return cast(Callable[..., T], make)
