"""``lapa label``: frame-pair shards in, latent-labelled shards out (spec 2.2.3, docs/artifacts.md).

Input shards are indexed (tar headers only) and cut into chunks that never cross a shard; loader
workers decode chunks and the map-style DataLoader returns them in input order, and the shard
writer fixes tar metadata, so the same checkpoint and shards give byte-identical tars. The
per-pair target is pluggable (``LabelTarget``): LAQ codes here, binned true actions for the
action-pretrained arm.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lapa.data.codec import decode_jpeg
from lapa.data.images import resize_square
from lapa.data.shard_reader import index_shard, list_shards, open_shard, read_info
from lapa.data.shards import ShardDirBuilder
from lapa.laq import metrics as M
from lapa.utils.io import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


class LabelTarget(Protocol):
    """What a labelled pair is tagged with: ``num_tokens`` ints in ``[0, vocab_size)``."""

    name: str
    num_tokens: int
    vocab_size: int
    needs_images: bool

    def __call__(self, batch: dict) -> np.ndarray:  # int64 [B, num_tokens]
        ...


class LAQTarget:
    """The LAQ's discrete latent action of each pair (batched, ``torch.inference_mode``)."""

    name = "laq"
    needs_images = True

    def __init__(self, model, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.num_tokens, self.vocab_size = model.num_tokens, model.vocab_size
        self.image_size = model.image_size

    def __call__(self, batch: dict) -> np.ndarray:
        with torch.inference_mode():
            ft = batch["frame_t"].to(self.device, non_blocking=True)
            ft1 = batch["frame_t1"].to(self.device, non_blocking=True)
            return self.model.predict_indices(ft, ft1).cpu().numpy().astype(np.int64)


ACTION_SOURCES = ("auto", "intended", "executed")


class ActionTarget:
    """The binned true action at frame t: the action-pretrained comparison arm.

    It labels the same pairs as the LAQ would, so the two arms differ only in their targets:
    one token per action dimension, ``num_bins`` values each, binned with the demonstrations'
    action statistics. Which action: ``source="auto"`` takes a pair's ``intended_action`` (the
    controller's action before exploration noise, recorded by simulator rollouts) when it has one,
    else its executed ``action``; ``"intended"`` requires the intended one (ValueError naming the
    shard and sample otherwise); ``"executed"`` always takes the executed one. The executed action
    of noisy videos adds noise that no image predicts. ``report()`` counts the pairs labelled
    from each.
    """

    name = "actions"
    needs_images = False

    def __init__(self, stats, source: str = "auto"):
        if source not in ACTION_SOURCES:
            raise ValueError(f"action source must be one of {', '.join(ACTION_SOURCES)}, got {source!r}")
        self.stats, self.source = stats, source
        self.num_tokens, self.vocab_size = stats.action_dim, stats.num_bins
        self.used = {"intended": 0, "executed": 0}

    def _pick(self, meta: dict) -> tuple[np.ndarray | None, str]:
        if self.source != "executed":
            intended = _action_of(meta, "intended_action")
            if intended is not None or self.source == "intended":
                return intended, "intended"
        return _action_of(meta), "executed"

    def __call__(self, batch: dict) -> np.ndarray:
        actions, kinds = [], []
        for key, meta in zip(batch["keys"], batch["meta"]):
            action, kind = self._pick(meta)
            if action is None or len(action) != self.num_tokens:
                what = "intended action" if kind == "intended" else "action"
                got = f"no {what}" if action is None else f"an {what} of {len(action)} dimensions"
                raise ValueError(
                    f"{batch.get('shard', '?')}: sample {key!r} has {got}; action targets need the "
                    f"{self.num_tokens}-dimensional true {what} of every pair (a simulator or robot source)"
                )
            actions.append(action)
            kinds.append(kind)
        codes = self.stats.quantize(np.stack(actions)).astype(np.int64)
        for kind in kinds:
            self.used[kind] += 1
        return codes

    def report(self) -> dict:
        """``action_source``: ``intended``, ``executed`` or ``mixed``, with the counts and the request."""
        used = [k for k, n in self.used.items() if n]
        which = used[0] if len(used) == 1 else ("mixed" if used else "none")
        if which == "mixed":
            log.warning(
                "action targets: %d pairs labelled with intended actions, %d with executed ones",
                self.used["intended"],
                self.used["executed"],
            )
        return {
            "action_source": which,
            "action_source_counts": dict(self.used),
            "action_source_requested": self.source,
        }


@dataclass
class Chunk:
    shard: str
    shard_index: int
    keys: list[str]
    members: list[dict]  # per key: {ext: tar member name}


class PairChunks(Dataset):
    """Map-style: chunk i -> decoded frames (resized to the model's size), raw frame-t JPEGs, metadata."""

    def __init__(self, chunks: list[Chunk], image_size: int | None, on_error: str):
        self.chunks, self.image_size, self.on_error = chunks, image_size, on_error

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> dict:
        chunk = self.chunks[i]
        ft, ft1, raw, metas, keys, skipped = [], [], [], [], [], []
        with open_shard(chunk.shard) as tar:
            for key, names in zip(chunk.keys, chunk.members):
                try:
                    missing = [e for e in ("t.jpg", "t1.jpg", "json") if e not in names]
                    if missing:
                        raise ValueError(f"missing {', '.join(missing)}")
                    t_bytes = tar.read(names["t.jpg"])
                    meta = json.loads(tar.read(names["json"]))
                    if self.image_size is not None:
                        ft.append(decode_jpeg(t_bytes))
                        ft1.append(decode_jpeg(tar.read(names["t1.jpg"])))
                except Exception as exc:
                    message = f"{chunk.shard}: sample {key!r}: {type(exc).__name__}: {exc}"
                    if self.on_error == "raise":
                        raise ValueError(message) from exc
                    log.warning("skipped: %s", message)
                    skipped.append(message)
                    continue
                raw.append(t_bytes)
                metas.append(meta)
                keys.append(key)
        out = {
            "shard": chunk.shard,
            "shard_index": chunk.shard_index,
            "keys": keys,
            "raw": raw,
            "meta": metas,
            "skipped": skipped,
        }
        if self.image_size is not None and keys:
            for name, frames in (("frame_t", ft), ("frame_t1", ft1)):
                x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
                out[name] = resize_square(x, self.image_size)
        return out


def plan_chunks(shards: list[str], chunk_size: int) -> list[Chunk]:
    chunks = []
    for si, shard in enumerate(shards):
        items = list(index_shard(shard).items())
        for start in range(0, len(items), chunk_size):
            part = items[start : start + chunk_size]
            chunks.append(Chunk(shard, si, [k for k, _ in part], [m for _, m in part]))
    return chunks


def _action_of(meta: dict, field: str = "action"):
    action = meta.get(field)
    if action is None:
        return None
    arr = np.asarray(action, dtype=np.float64)
    return None if arr.size == 0 or np.isnan(arr).any() else arr


def label_shards(
    shard_dir,
    out_dir,
    target: LabelTarget,
    *,
    batch_size: int = 256,
    num_workers: int = 2,
    on_error: str = "raise",
    action_bins: int = 8,
    prefix: str = "latent",
    samples_per_shard: int = 1000,
    max_shard_bytes: int = 2_000_000_000,
    extra_info: dict | None = None,
) -> dict:
    """Label both splits of ``shard_dir`` into ``out_dir`` (atomically); return the report."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"data.loader.on_error must be 'raise' or 'skip', got {on_error!r}")
    shard_dir, out_dir = Path(shard_dir), Path(out_dir)
    info_in = read_info(shard_dir)
    if info_in.get("kind") not in (None, "pairs"):
        raise ValueError(
            f"{shard_dir}/info.json: kind {info_in.get('kind')!r}; label needs frame-pair shards"
        )
    image_size = getattr(target, "image_size", None) if target.needs_images else None
    report: dict = {"target": target.name, "num_tokens": target.num_tokens, "vocab_size": target.vocab_size}
    counts, skipped = {}, []
    with atomic_directory(out_dir) as tmp:
        builder = ShardDirBuilder(
            tmp,
            prefix,
            image_size=info_in.get("image_size"),
            samples_per_shard=samples_per_shard,
            max_shard_bytes=max_shard_bytes,
            check_stems=False,
        )
        for split in SPLITS:
            try:
                shards = list_shards(shard_dir, split)
            except FileNotFoundError:
                if split == "train":
                    raise
                shards = []
            codes_all, actions_all, frames_all, groups_all = [], [], [], []
            loader = DataLoader(
                PairChunks(plan_chunks(shards, batch_size), image_size, on_error),
                batch_size=None,
                shuffle=False,
                num_workers=num_workers,
            )
            try:
                for batch in loader:
                    skipped.extend(batch["skipped"])
                    if not batch["keys"]:
                        continue
                    codes = target(batch)
                    for key, raw, meta, code in zip(batch["keys"], batch["raw"], batch["meta"], codes):
                        sample = {
                            "__key__": key,
                            "image.jpg": raw,
                            "txt": meta.get("instruction") or "",
                            "latent.npy": np.asarray(code, dtype=np.int64),
                            "json": meta,
                        }
                        builder.write(
                            split,
                            sample,
                            episode_id=meta.get("video_id"),
                            frame_index=meta.get("frame_index"),
                        )
                    codes_all.append(codes)
                    actions_all.extend(_action_of(m) for m in batch["meta"])
                    groups_all.extend(str(m.get("video_id", "")) for m in batch["meta"])
                    if "frame_t" in batch:
                        frames_all.append(M.frame_features(batch["frame_t"]))
                builder.writers[split].close()
            except BaseException:
                builder.abort()
                raise
            counts[split] = builder.counts[split]
            if codes_all:
                codes = np.concatenate(codes_all)
                split_report = M.code_summary(codes, target.vocab_size)
                known = [i for i, a in enumerate(actions_all) if a is not None]
                if len(known) >= 2 and len({len(actions_all[i]) for i in known}) == 1:
                    acts = np.stack([actions_all[i] for i in known])
                    feats = np.concatenate(frames_all)[known] if len(frames_all) == len(codes_all) else None
                    split_report["code_action"] = M.code_action_diagnostics(
                        codes[known],
                        acts,
                        target.vocab_size,
                        action_bins,
                        frame_feats=feats,
                        groups=[groups_all[i] for i in known],
                    )
                report[split] = split_report
        report["skipped"] = {"count": len(skipped), "samples": skipped[:100]}
        report["counts"] = counts
        report.update(target.report() if hasattr(target, "report") else {})
        builder.finish(
            action_dim=info_in.get("action_dim"),
            num_tokens=target.num_tokens,
            vocab_size=target.vocab_size,
            target=target.name,
            source_shards=str(shard_dir),
            skipped=len(skipped),
            **(extra_info or {}),
        )
        atomic_write_json(tmp / "label_report.json", report)
    return report
