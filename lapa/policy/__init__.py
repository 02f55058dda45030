"""The deployable policy: a self-contained directory, Python API, HTTP server and export."""

from __future__ import annotations

__all__ = ["LAPAPolicy", "save_policy"]


def __getattr__(name: str):
    # lazy: ``lapa --help`` imports lapa.commands.policy and must not pay for torch
    if name in __all__:
        from lapa.policy import policy

        return getattr(policy, name)
    raise AttributeError(f"module 'lapa.policy' has no attribute {name!r}")
