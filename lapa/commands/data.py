"""``lapa shards``: sources into frame-pair or demonstration shard directories."""

from __future__ import annotations

import argparse

from lapa.commands import add_config_arguments, load_config_from_args

_EPILOG = """\
inputs: video files (mp4/webm/avi/mkv/mov, decoded with PyAV), folders of image sequences (one
folder = one episode; 8/16-bit and float images scaled to 8 bits), .txt files listing such paths
(one a line), directories holding any of these, and LeRobot v3 dataset directories (with
meta/info.json, e.g. the output of `lapa rollouts`). An optional <video>.txt beside a video holds
its instruction.

time: frames are sampled by presentation time: for each 1/fps step the nearest frame within half
a step (variable frame rates included; fps=null keeps every frame). Pairs are (t, t+k) with k
counted in kept frames (frame_offset), or (t, the frame nearest t + frame_offset_s seconds).
Videos are shown as players show them: the display rotation of phone clips is applied.

LeRobot: each row gets the frame at its parquet timestamp (within timestamp_tolerance_s, LeRobot's
1e-4 s) or the build stops naming the episode, row and gap. camera=<feature> picks the camera
(required when there are several); demos with state_keys=[observation.state] carry state.npy.
info.json records the camera and state keys.

output: DIR/train/*.tar and DIR/val/*.tar, DIR/manifest.parquet (every sample and every skipped
source or episode with the reason) and DIR/info.json (counts, skips, frames with NaN actions). Sample keys are
<readable id>-<10 hex of SHA-256 of the source path>_<frame> (no dots); the same source given twice
is an error naming both. Splits go by a hash of the episode id and split_seed, never leaving a
split empty from two episodes on; train_episodes_per_task=N gives exactly N training episodes per
task. DIR appears only when complete.

resuming: the build runs in chunks of chunk_sources sources (LeRobot: episodes) kept in
.DIR.build/ beside DIR; after a kill, the same command continues from the finished chunks and
gives byte-identical shards (resume=false starts afresh).

settings: data.sharding.* (fps, frame_offset, frame_offset_s, resize, crop, jpeg_quality,
samples_per_shard, max_shard_bytes, val_fraction, split_seed, train_episodes_per_task, workers,
on_error=raise|skip, chunk_sources, resume, camera, state_keys, timestamp_tolerance_s).
"""


def register(sub) -> None:
    parser = sub.add_parser(
        "shards",
        help="pack videos, image folders or LeRobot datasets into WebDataset tar shards",
        description="Pack sources into WebDataset tar shards for training.",
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    helps = {
        "pairs": "frame pairs (t, t+k) for LAQ: {key}.t.jpg, {key}.t1.jpg, {key}.json",
        "demos": "demonstrations for finetuning: {key}.image.jpg, {key}.txt, {key}.action.npy, {key}.json "
        "(LeRobot sources with actions and instructions)",
    }
    for kind, text in helps.items():
        p = kinds.add_parser(
            kind,
            help=text,
            description=text,
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument(
            "--input",
            "-i",
            nargs="+",
            required=True,
            metavar="SRC",
            help="videos, image folders, list files, directories or LeRobot dataset directories",
        )
        p.add_argument("--out", "-o", required=True, metavar="DIR", help="shard directory to write")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        add_config_arguments(p)
        p.set_defaults(func=run_shards, command="shards")


def run_shards(args: argparse.Namespace) -> int:
    import json
    import re
    from pathlib import Path

    from lapa.data.build import build_shards

    # `--input a b key=value` lets argparse take overrides as inputs: hand them back
    override = re.compile(r"^[A-Za-z_][\w.]*=")
    moved = [i for i in args.input if override.match(i) and not Path(i).exists()]
    args.input = [i for i in args.input if i not in moved]
    args.overrides = [*moved, *(args.overrides or [])]
    if not args.input:
        raise ValueError("--input names no sources")
    cfg = load_config_from_args(args)
    info = build_shards(args.kind, args.input, args.out, cfg.data.sharding, progress=not args.no_progress)
    summary = {k: info[k] for k in ("counts", "episodes", "skipped", "image_size", "action_dim")}
    print(json.dumps({"out": str(args.out), **summary}, sort_keys=True))
    return 0
