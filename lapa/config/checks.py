"""What a config value may be, declared beside the field in the typed dataclasses and checked on load.

A field states what it allows in its metadata::

    batch_size: int = field(default=32, metadata=at_least(1))
    on_error: str = field(default="raise", metadata=one_of("raise", "skip"))
    val_fraction: float = field(default=0.1, metadata=in_range(0, 1, high_open=True))

and a section may relate two of its fields (``ORDERS``, a ``ClassVar`` of ``Order``). OmegaConf
already refuses unknown keys and values of the wrong type; ``validate`` checks these constraints
on the composed config and raises one ``ValueError`` listing every value that breaks one, each as
``<key> must be <allowed>, got <value> (<where it was set>)``, with ``: <what is wrong>`` after
the value where the check says (``each(..., unique=True)`` names the repeated items), one per line
when several.

``None`` passes every check: an optional field's None means "unset" (its documented fallback).
A subclass that redeclares a field only to change its default (``finetune.training.max_steps``)
keeps the check its parent declared.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

CHECK = "lapa.check"  # the metadata key holding a field's Check


@dataclass(frozen=True)
class Check:
    """``test(value) -> bool`` for a non-None value; ``allowed`` completes "<key> must be ...";
    ``detail(value)``, when given, says what is wrong with a refused value (appended after "got
    <value>" when not empty)."""

    test: Callable[[Any], bool]
    allowed: str
    detail: Callable[[Any], str] | None = None


@dataclass(frozen=True)
class Order:
    """``low`` must not exceed ``high`` (``strict``: must be below it), both fields of one section."""

    low: str
    high: str
    strict: bool = False


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def satisfies(test: Callable[[Any], bool], allowed: str) -> dict:
    """Field metadata: any predicate, with the text completing "<key> must be ..."."""
    return {CHECK: Check(test, allowed)}


def at_least(low: float) -> dict:
    """A number >= ``low`` (counts, steps, sizes, seeds)."""
    return satisfies(lambda v: _number(v) and v >= low, f">= {_fmt(low)}")


def above(low: float) -> dict:
    """A number > ``low`` (rates, scales, tolerances that 0 would break)."""
    return satisfies(lambda v: _number(v) and v > low, f"> {_fmt(low)}")


def in_range(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> dict:
    """A number in the interval from ``low`` to ``high``; ``*_open`` excludes that end."""

    def test(v: Any) -> bool:
        if not _number(v):
            return False
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    text = f"in {'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}{')' if high_open else ']'}"
    return satisfies(test, text)


def one_of(*choices: str) -> dict:
    """One of the given strings."""
    return satisfies(lambda v: v in choices, f"one of {', '.join(map(repr, choices))}")


def _repeated(items: Sequence[Any]) -> list[Any]:
    """The items of ``items`` found more than once, in order of first repeat."""
    seen: list[Any] = []
    out: list[Any] = []
    for x in items:
        if x in seen and x not in out:
            out.append(x)
        seen.append(x)
    return out


def each(inner: dict, allowed: str, *, nonempty: bool = False, unique: bool = False) -> dict:
    """A list whose every item passes ``inner`` (and, with ``nonempty``, at least one item; with
    ``unique``, no item twice: a refusal then names the repeated items)."""
    check: Check = inner[CHECK]

    def test(v: Any) -> bool:
        items = list(v)
        if unique and _repeated(items):
            return False
        return (bool(items) or not nonempty) and all(x is not None and check.test(x) for x in items)

    def detail(v: Any) -> str:
        repeated = _repeated(list(v)) if unique else []
        return f"{', '.join(map(repr, repeated))} repeated" if repeated else ""

    return {CHECK: Check(test, allowed, detail)}


def field_check(cls: type, name: str) -> Check | None:
    """The check declared for ``name`` by ``cls`` or, failing that, the nearest parent declaring one."""
    for klass in cls.__mro__:
        declared = getattr(klass, "__dataclass_fields__", {}).get(name)
        if declared is not None and CHECK in declared.metadata:
            return declared.metadata[CHECK]
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _where(key: str, sources: Sequence[tuple[str, DictConfig]]) -> str:
    """The last source that set ``key``: a file or a command-line override, else the default."""
    missing = object()
    for source, fragment in reversed(sources):
        try:
            found = OmegaConf.select(fragment, key, default=missing, throw_on_missing=False)
        except Exception:  # a fragment may hold an intermediate non-mapping where the key runs through
            found = missing
        if found is not missing:
            return f"set in {source}"
    return "the default"


def violations(node: DictConfig, prefix: str = "") -> list[tuple[tuple[str, ...], str]]:
    """(dotted keys involved, message without the source) for every value of ``node`` breaking its
    check, and every pair of its sections' fields breaking their ``ORDERS``."""
    out: list[tuple[tuple[str, ...], str]] = []
    cls = OmegaConf.get_type(node)
    is_section = isinstance(cls, type) and dataclasses.is_dataclass(cls)
    for name in node:
        key = f"{prefix}{name}"
        child = node._get_node(name)
        if isinstance(child, DictConfig):
            if child._is_none():
                continue
            out.extend(violations(child, f"{key}."))
            continue
        if not is_section:
            continue
        check = field_check(cls, str(name))
        value = node[name]
        if check is not None and value is not None and not check.test(value):
            message = f"{key} must be {check.allowed}, got {_plain(value)!r}"
            detail = check.detail(_plain(value)) if check.detail is not None else ""
            out.append(((key,), f"{message}: {detail}" if detail else message))
    if is_section:
        for order in getattr(cls, "ORDERS", ()):
            low, high = node.get(order.low), node.get(order.high)
            if low is None or high is None:
                continue
            if (low >= high) if order.strict else (low > high):
                relation = "<" if order.strict else "<="
                keys = (f"{prefix}{order.low}", f"{prefix}{order.high}")
                message = f"{keys[0]} must be {relation} {keys[1]}, got {low!r} and {high!r}"
                out.append((keys, message))
    return out


def validate(cfg: DictConfig, sources: Sequence[tuple[str, DictConfig]] = ()) -> None:
    """Raise ValueError naming every key whose value breaks its declared constraint.

    ``sources``: the (name, fragment) pairs merged into ``cfg``, in merge order; each message
    names the last one that set the key.
    """
    found = violations(cfg)
    if found:
        lines = []
        for keys, message in found:
            if len(keys) == 1:
                lines.append(f"{message} ({_where(keys[0], sources)})")
            else:
                where = "; ".join(f"{key.rsplit('.', 1)[-1]} {_where(key, sources)}" for key in keys)
                lines.append(f"{message} ({where})")
        if len(lines) == 1:
            raise ValueError(lines[0])
        raise ValueError(f"{len(lines)} values are not allowed:\n" + "\n".join(f"  {line}" for line in lines))
