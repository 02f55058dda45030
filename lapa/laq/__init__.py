"""Stage 1: the latent action quantizer (a VQ-VAE over frame pairs) and latent labelling.

Heavy modules load lazily so the config schema (which imports ``lapa.config.laq``) stays light.
"""

from __future__ import annotations

__all__ = ["LAQModel", "load_laq"]


def __getattr__(name: str):
    if name == "load_laq":
        from lapa.laq.checkpoint import load_laq

        return load_laq
    if name == "LAQModel":
        from lapa.laq.model import LAQModel

        return LAQModel
    raise AttributeError(f"module 'lapa.laq' has no attribute {name!r}")
