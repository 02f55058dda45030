"""Videos read right: presentation-time sampling (VFR), display rotation, offsets in seconds, streaming."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from lapa.config.data import ShardingConfig
from lapa.data.build import build_shards
from lapa.data.codec import decode_jpeg
from lapa.data.samples import PairFrame, PairMaker
from lapa.data.shard_reader import iter_samples, list_shards
from lapa.data.video import VideoReader

torch.set_num_threads(1)


def _cfg(**kw) -> ShardingConfig:
    base = dict(fps=10.0, resize=48, crop=48, val_fraction=0.0, workers=1, samples_per_shard=1000)
    base.update(kw)
    return ShardingConfig(**base)


def _samples(out) -> list[dict]:
    samples = []
    for split in ("train", "val"):
        try:
            samples += list(iter_samples(list_shards(out, split)))
        except FileNotFoundError:
            pass
    return samples


def encode_timed(
    path, times: list[float], frames: np.ndarray, rate: int = 10, codec: str = "libx264"
) -> None:
    """A video whose frame i is shown at ``times[i]`` seconds (variable frame rate when uneven)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)  # the nominal (average) rate the header claims
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.time_base = Fraction(1, 1000)
        for t, image in zip(times, frames, strict=True):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_variable_frame_rate_is_sampled_by_presentation_time(tmp_path):
    """2 s at 10 fps then 2 s at 60 fps, sampled at 10 fps: 40 frames 0.1 s apart, 39 pairs."""
    times = [k / 10 for k in range(20)] + [2 + k / 60 for k in range(120)]
    frames = np.zeros((len(times), 48, 64, 3), np.uint8)
    frames[:] = np.arange(len(times), dtype=np.uint8)[:, None, None, None]
    video = tmp_path / "vfr.mkv"
    encode_timed(video, times, frames, rate=10)  # the header says 10 fps on average
    with VideoReader(str(video)) as reader:
        assert reader.native_fps == 10  # the rate a reader that trusts the header would use
    info = build_shards("pairs", [str(video)], tmp_path / "pairs", _cfg(), progress=False)
    assert sum(info["counts"].values()) == 39
    metas = sorted((json.loads(s["json"]) for s in _samples(tmp_path / "pairs")), key=lambda m: m["time_s"])
    assert np.allclose([m["time_s"] for m in metas], np.arange(39) / 10, atol=1 / 120)
    assert np.allclose([m["offset_s"] for m in metas], 0.1, atol=1 / 60)
    # in the 60 fps part consecutive samples are six native frames apart
    assert [m["frame_index_t1"] - m["frame_index"] for m in metas[21:]] == [6] * 18


def _portrait_markers(height: int = 240, width: int = 320) -> np.ndarray:
    """A stored landscape frame: red block top-left, green block top-right."""
    image = np.full((height, width, 3), 30, np.uint8)
    image[:40, :60] = (230, 30, 30)
    image[:40, -60:] = (30, 230, 30)
    return image


def test_display_rotation_is_applied(tmp_path):
    """A 320x240 clip with rotate=90 (a phone held upright) comes out portrait, turned clockwise."""
    import av

    video = tmp_path / "phone.mp4"
    image = _portrait_markers()
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.set_display_rotation(-90)  # what `ffmpeg -metadata:s:v:0 rotate=90` stores
        for _ in range(4):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with VideoReader(str(video)) as reader:
        frames = [f.rgb() for f in reader.frames()]
    shown = frames[0]
    assert shown.shape == (320, 240, 3)  # portrait
    red = shown[:60, -40:].mean(axis=(0, 1))
    green = shown[-60:, -40:].mean(axis=(0, 1))
    assert red[0] > 180 and red[1] < 80  # stored top-left is shown top-right
    assert green[1] > 180 and green[0] < 80  # stored top-right is shown bottom-right
    assert shown[:60, :40].mean() < 60  # nothing in the shown top-left
    # the shards hold the shown orientation (centre 240x240 of the portrait frame)
    build_shards("pairs", [str(video)], tmp_path / "pairs", _cfg(resize=240, crop=240), progress=False)
    first = decode_jpeg(_samples(tmp_path / "pairs")[0]["t.jpg"])
    assert first[:20, -40:, 0].mean() > 180 and first[:20, :40].mean() < 60


def test_frame_offset_in_seconds_gives_one_time_gap_across_rates(
    tmp_path, coded_frames, write_video, frame_code
):
    write_video(tmp_path / "v" / "slow.mp4", coded_frames(12, 48, 64), fps=10)
    write_video(tmp_path / "v" / "fast.mp4", coded_frames(24, 48, 64), fps=30)
    cfg = _cfg(fps=None, frame_offset_s=0.2)
    info = build_shards("pairs", [str(tmp_path / "v")], tmp_path / "pairs", cfg, progress=False)
    assert info["settings"]["frame_offset_s"] == 0.2
    by_video: dict[str, list] = {}
    for s in _samples(tmp_path / "pairs"):
        meta = json.loads(s["json"])
        by_video.setdefault(meta["video_id"], []).append(meta)
        assert frame_code(decode_jpeg(s["t1.jpg"])) == meta["frame_index_t1"]
    assert len(by_video["slow"]) == 10 and len(by_video["fast"]) == 24 - 6
    assert {m["frame_index_t1"] - m["frame_index"] for m in by_video["slow"]} == {2}
    assert {m["frame_index_t1"] - m["frame_index"] for m in by_video["fast"]} == {6}
    assert np.allclose([m["offset_s"] for v in by_video.values() for m in v], 0.2, atol=1e-3)


@pytest.mark.parametrize("offset_s", [None, 0.5])
def test_pairs_hold_only_the_frames_they_still_need(offset_s):
    maker = PairMaker(stem="s", meta={}, frame_offset=3, frame_offset_s=offset_s, tolerance_s=0.05)
    pairs, peak = [], 0
    for i in range(5000):  # a long stream at 10 fps
        pairs += maker.push(PairFrame(i, i / 10, b"", None))
        peak = max(peak, len(maker.window))
    pairs += maker.finish()
    step = 3 if offset_s is None else 5
    assert len(pairs) == 5000 - step and peak <= step + 2
    assert all(p["json"]["frame_index_t1"] - p["json"]["frame_index"] == step for p in pairs)
    with pytest.raises(ValueError, match="presentation order"):
        maker.push(PairFrame(1, 0.1, b"", None))


def test_a_video_cut_short_is_an_error_or_a_counted_skip_never_fewer_frames(tmp_path):
    import av

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (26, 48, 64, 3), dtype=np.uint8)  # noise: every packet is large
    full = tmp_path / "full.mp4"
    with av.open(str(full), "w", options={"movflags": "faststart"}) as container:  # index first
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    with VideoReader(str(full)) as reader:
        assert sum(1 for _ in reader.frames()) == 26
    cut_dir = tmp_path / "videos"
    cut_dir.mkdir()
    cut = cut_dir / "cut.mp4"
    data = full.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.8)])  # ends inside a packet, as a broken copy does
    with (
        VideoReader(str(cut)) as reader,
        pytest.raises(ValueError, match=rf"{cut}: the video data is cut short"),
    ):
        list(reader.frames())
    with pytest.raises(ValueError, match="cut short"):
        build_shards("pairs", [str(cut_dir)], tmp_path / "raise", _cfg(), progress=False)
    (cut_dir / "whole.mp4").write_bytes(data)
    build_shards("pairs", [str(cut_dir)], tmp_path / "skip", _cfg(on_error="skip"), progress=False)
    info = json.loads((tmp_path / "skip" / "info.json").read_text())
    assert info["skipped"] == 1
    assert {s["__key__"].split("-")[0] for s in _samples(tmp_path / "skip")} == {"whole"}
