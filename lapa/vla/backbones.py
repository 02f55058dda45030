"""The local "backbones" directory: vision tower weights, the Llama and its tokenizer.

Everything the foundation stage starts from lives in one directory read with local paths only,
so compute nodes without internet never try to download anything. Layout::

    backbones.json       # the vision config the weights belong to, where the Llama/tokenizer came from
    vision.safetensors   # FusedVisionEncoder state (random or from local timm weight files)
    llm/                 # a HF LlamaModel directory (saved, or a link to foundation.llm.path)
    tokenizer/           # a HF tokenizer directory (trained on the instructions, or a link)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

from lapa.data.shard_reader import iter_samples
from lapa.utils.io import atomic_directory

log = logging.getLogger(__name__)

BACKBONES_FORMAT = 1


def _container(cfg: Any) -> dict:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    from dataclasses import asdict, is_dataclass

    return asdict(cfg) if is_dataclass(cfg) else dict(cfg)


def read_instructions(shard_dirs: list[str | os.PathLike]) -> list[str]:
    """Unique instructions from the ``.txt`` entries (labelled/demo shards) or the ``instruction``
    field of the ``.json`` entries (pair shards) of every ``.tar`` under the given directories."""
    found: dict[str, None] = {}
    for d in shard_dirs:
        d = Path(d)
        if not d.is_dir():
            raise FileNotFoundError(f"instruction shard directory not found: {d}")
        tars = sorted(d.rglob("*.tar"))
        if not tars:
            raise FileNotFoundError(f"no .tar shards under {d}")
        for tar_path in tars:
            try:
                for sample in iter_samples(tar_path, exts=("txt", "json")):
                    for ext in ("txt", "json"):
                        if ext not in sample:
                            continue
                        data = sample[ext].decode("utf-8")
                        text = json.loads(data).get("instruction") if ext == "json" else data
                        if isinstance(text, str) and text.strip():
                            found[text.strip()] = None
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"cannot read instructions from shard {tar_path}: {exc}") from exc
    if not found:
        raise ValueError(f"no instructions found in {', '.join(str(d) for d in shard_dirs)}")
    return list(found)


def _link_or_copy(src: Path, dst: Path) -> str:
    if not src.is_dir():
        raise FileNotFoundError(f"local directory not found: {src}")
    try:
        os.symlink(src.resolve(), dst, target_is_directory=True)
        return "link"
    except OSError:
        import shutil

        shutil.copytree(src, dst)
        return "copy"


def make_backbones(cfg: Any, instructions: list[str], out_dir: str | os.PathLike) -> None:
    """Write the backbones directory for the ``foundation`` section ``cfg``.

    The vision towers are random or built from ``vision.<tower>.weights`` (local timm weight
    files); the Llama and tokenizer are linked from ``llm.path`` / ``llm.tokenizer_path`` when set,
    else the tokenizer is trained on ``instructions`` and a random Llama of ``cfg.llm``'s shape is
    saved with that tokenizer's vocabulary.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaModel

    from lapa.vla.model import llama_config_from
    from lapa.vla.vision import FusedVisionEncoder

    llm_cfg = cfg.llm
    with atomic_directory(out_dir) as tmp:
        if llm_cfg.tokenizer_path or llm_cfg.path:
            tok_src = Path(llm_cfg.tokenizer_path or llm_cfg.path)
            tokenizer = AutoTokenizer.from_pretrained(tok_src, local_files_only=True)
            tok_source = {"kind": _link_or_copy(tok_src, tmp / "tokenizer"), "path": str(tok_src)}
        else:
            from lapa.vla.tokenizer import train_llama_tokenizer

            tokenizer = train_llama_tokenizer(instructions, int(llm_cfg.tokenizer_vocab_size))
            tokenizer.save_pretrained(tmp / "tokenizer")
            tok_source = {"kind": "trained", "num_instructions": len(instructions)}
        vocab = len(tokenizer)

        if llm_cfg.path:
            llm_src = Path(llm_cfg.path)
            if not (llm_src / "config.json").is_file():
                raise FileNotFoundError(f"foundation.llm.path {llm_src} has no config.json")
            llm_source = {"kind": _link_or_copy(llm_src, tmp / "llm"), "path": str(llm_src)}
        else:
            torch.manual_seed(0)
            llm = LlamaModel(llama_config_from(llm_cfg, vocab))
            llm.save_pretrained(tmp / "llm")
            llm_source = {"kind": "random", "vocab_size": vocab}
            del llm

        vision = FusedVisionEncoder(cfg.vision, build_weights=True)
        state = {k: v.detach().contiguous() for k, v in vision.state_dict().items()}
        save_file(state, str(tmp / "vision.safetensors"))
        record = {
            "format": BACKBONES_FORMAT,
            "vision": _container(cfg.vision),
            "llm": llm_source,
            "tokenizer": tok_source,
            "tokenizer_size": vocab,
        }
        (tmp / "backbones.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    log.info("backbones written to %s (tokenizer %d tokens, llm %s)", out_dir, vocab, llm_source["kind"])


class Backbones(NamedTuple):
    """What ``load_backbones`` returns.

    vision_state: FusedVisionEncoder state dict (load into ``VLAModel.vision``);
    llm: the LlamaModel; tokenizer: the HF tokenizer; info: the parsed ``backbones.json``
    (``info["vision"]`` is the vision config the weights belong to).
    """

    vision_state: dict
    llm: Any
    tokenizer: Any
    info: dict


def load_backbones(path: str | os.PathLike, dtype: Any = None, *, meta_llm: bool = False) -> Backbones:
    """Read a backbones directory with local files only; ``dtype``: the Llama's load dtype (default fp32).

    ``meta_llm=True`` returns the Llama built on the ``meta`` device without reading its weights
    (for FSDP2: shard first, then ``lapa.vla.meta.materialize`` reads each rank's rows of
    ``<path>/llm``).
    """
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    path = Path(path)
    meta = path / "backbones.json"
    if not meta.is_file():
        raise FileNotFoundError(
            f"{path} is not a backbones directory (no backbones.json); run lapa make-backbones"
        )
    info = json.loads(meta.read_text())
    if info.get("format") != BACKBONES_FORMAT:
        raise ValueError(f"{meta}: unsupported backbones format {info.get('format')!r}")
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    if meta_llm:
        from lapa.vla.meta import empty_llama

        llm = empty_llama(LlamaConfig.from_pretrained(path / "llm", local_files_only=True))
    else:
        llm = LlamaModel.from_pretrained(path / "llm", local_files_only=True, dtype=dtype or torch.float32)
    vision_state = load_file(str(path / "vision.safetensors"))
    if llm.config.vocab_size < len(tokenizer):
        raise ValueError(
            f"{path}: the Llama has {llm.config.vocab_size} embeddings but the tokenizer {len(tokenizer)}"
        )
    return Backbones(vision_state, llm, tokenizer, info)


def check_vision_matches(vision_cfg: Any, info: dict, path: str | os.PathLike) -> None:
    """The experiment's vision config must describe the towers whose weights the directory holds."""
    want = _container(vision_cfg)
    have = info.get("vision", {})
    for key in ("image_size",):
        if want.get(key) != have.get(key):
            raise ValueError(
                f"{path}: backbones were made with vision.{key}={have.get(key)}, config has {want.get(key)}"
            )
    for tower in ("siglip", "dinov2"):
        for key in ("arch", "overrides"):
            a, b = want.get(tower, {}).get(key), have.get(tower, {}).get(key)
            if a != b:
                raise ValueError(
                    f"{path}: backbones were made with foundation.vision.{tower}.{key}={b!r}, "
                    f"config has {a!r}"
                )
