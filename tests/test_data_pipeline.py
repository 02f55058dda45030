"""The shard loading pipeline: batches per task, exact-once splitting, augmentations, bad shards."""

from __future__ import annotations

import collections
import tarfile

import numpy as np
import pytest
import torch

from lapa.config.data import LoaderConfig, ShardingConfig
from lapa.data.episode import Episode
from lapa.data.pipeline import ShardReadError, list_shards, make_dataset, make_loader, read_info
from lapa.data.shards import ShardWriter, encode_jpeg, write_pair_shards, write_shard_dir_metadata

torch.set_num_threads(1)


def _episodes(coded_frames, n_episodes=6, n_frames=8, with_actions=True):
    out = []
    for i in range(n_episodes):
        actions = np.full((n_frames, 3), i, np.float32) if with_actions and i % 2 == 0 else None
        out.append(
            Episode(
                f"vid{i}",
                coded_frames(n_frames, 32, 32),
                fps=10,
                instruction=f"task {i}" if i else None,
                actions=actions,
                source=f"/videos/vid{i}.mp4",
            )
        )
    return out


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory):
    from conftest import make_coded_frames

    out = tmp_path_factory.mktemp("shards") / "pairs"
    cfg = ShardingConfig(resize=32, crop=32, samples_per_shard=4, val_fraction=0.35, frame_offset=1)
    write_pair_shards(_episodes(make_coded_frames), out, cfg)
    return out


def _cfg(**kw) -> LoaderConfig:
    base = dict(batch_size=4, num_workers=0, shuffle_buffer=8, image_size=32, augment=False)
    base.update(kw)
    return LoaderConfig(**base)


def _keys(loader) -> list[str]:
    return [k for batch in loader for k in batch["key"]]


def test_laq_batches(pair_dir, frame_code):
    info = read_info(pair_dir)
    batches = list(make_loader(list_shards(pair_dir, "train"), "laq", _cfg(), train=True))
    assert len(batches) == info["counts"]["train"] // 4  # training drops the last partial batch
    batch = batches[0]
    assert batch["frame_t"].shape == (4, 3, 32, 32) and batch["frame_t"].dtype == torch.uint8
    assert batch["frame_t1"].shape == (4, 3, 32, 32) and batch["frame_t1"].dtype == torch.uint8
    assert batch["action"].shape == (4, 3) and batch["action"].dtype == torch.float32
    assert batch["has_action"].dtype == torch.bool
    assert batch["frame_index"].dtype == torch.int64
    assert all(
        isinstance(batch[k], list) and len(batch[k]) == 4 for k in ("key", "video_id", "instruction", "task")
    )
    for b in batches:
        for i in range(4):
            # the pair really is (t, t+1): the index survives resize, crop and JPEG
            assert frame_code(b["frame_t"][i]) == b["frame_index"][i]
            assert frame_code(b["frame_t1"][i]) == b["frame_index"][i] + 1
            ep = int(b["video_id"][i][3:])
            assert bool(b["has_action"][i]) == (ep % 2 == 0)
            if ep % 2 == 0:
                assert torch.all(b["action"][i] == ep)
            else:
                assert torch.isnan(b["action"][i]).all()
            assert b["instruction"][i] == (f"task {ep}" if ep else "")


def test_validation_reads_every_sample_once_in_order(pair_dir):
    info = read_info(pair_dir)
    first = _keys(make_loader(pair_dir, "laq", _cfg(), train=False))
    assert len(first) == info["counts"]["val"] == len(set(first))
    assert first == _keys(make_loader(pair_dir, "laq", _cfg(), train=False))
    train = _keys(make_loader(pair_dir, "laq", _cfg(batch_size=1), train=True))
    assert not {k.rsplit("_", 1)[0] for k in train} & {k.rsplit("_", 1)[0] for k in first}


def test_training_shuffles_per_epoch(pair_dir):
    ds = make_dataset(pair_dir, "laq", _cfg(batch_size=1), train=True, seed=3)
    a, b = [x["key"][0] for x in ds], [x["key"][0] for x in ds]
    assert sorted(a) == sorted(b) and a != b
    ds.set_epoch(5)
    c = [x["key"][0] for x in ds]
    ds.set_epoch(5)
    assert c == [x["key"][0] for x in ds]


@pytest.mark.parametrize(("split", "num_shards"), [("train", None), ("val", 3), ("val", 1)])
def test_two_ranks_two_workers_read_each_sample_once(pair_dir, split, num_shards):
    """4 slots (2 ranks x 2 loader workers): shard-level split with >= 4 shards, sample-level with fewer."""
    shards = list_shards(pair_dir, split)[:num_shards]
    assert (len(shards) >= 4) == (num_shards is None)
    expected = _keys(make_loader(shards, "laq", _cfg(batch_size=1), train=False, rank=0, world_size=1))
    train = split == "train"
    seen = collections.Counter()
    per_rank = []
    for rank in range(2):
        loader = make_loader(
            shards, "laq", _cfg(batch_size=1, num_workers=2), train=train, rank=rank, world_size=2
        )
        keys = _keys(loader)
        per_rank.append(len(keys))
        seen.update(keys)
    assert sorted(seen) == sorted(expected) and max(seen.values()) == 1
    assert min(per_rank) > 0


def test_rank_from_environment(pair_dir, monkeypatch):
    shards = list_shards(pair_dir, "val")
    keys = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        keys += _keys(make_loader(shards, "laq", _cfg(batch_size=1), train=False))
    assert sorted(keys) == sorted(
        _keys(make_loader(shards, "laq", _cfg(batch_size=1), train=False, rank=0, world_size=1))
    )


def test_epoch_samples_resamples_fixed_epochs(pair_dir):
    ds = make_dataset(pair_dir, "laq", _cfg(batch_size=4), train=True, epoch_samples=40)
    batches = list(ds)
    assert len(batches) == 10  # 40 samples from a 20-something sample split: with replacement
    loader = make_loader(pair_dir, "laq", _cfg(batch_size=4, num_workers=2), train=True, epoch_samples=40)
    assert len(list(loader)) == 10


def test_augmentation_is_identical_for_both_frames(pair_dir):
    cfg = _cfg(batch_size=8, augment=True, color_jitter=0.3, random_resized_crop_scale=0.5, shuffle_buffer=1)
    aug = next(iter(make_dataset(pair_dir, "laq", cfg, train=True, seed=1)))
    plain = next(
        iter(make_dataset(pair_dir, "laq", _cfg(batch_size=8, shuffle_buffer=1), train=True, seed=1))
    )
    assert aug["key"] == plain["key"] and aug["frame_t"].dtype == torch.uint8
    assert aug["frame_t"].shape == (8, 3, 32, 32)
    assert not torch.equal(aug["frame_t"], plain["frame_t"])
    for i in range(8):
        # the same crop and colour change on both frames: the backgrounds (the code) change alike, and the
        # difference between the frames is confined to where the square moved, as in the originals
        delta_aug = (aug["frame_t1"][i].float() - aug["frame_t"][i].float()).abs().mean(0)
        delta = (plain["frame_t1"][i].float() - plain["frame_t"][i].float()).abs().mean(0)
        bg_aug = torch.quantile(delta_aug.flatten(), 0.1)
        bg = torch.quantile(delta.flatten(), 0.1)
        assert abs(float(bg_aug) - float(bg)) <= 0.35 * float(bg) + 3


def _demo_dir(tmp_path, corrupt: str | None = None):
    out = tmp_path / "latent"
    with ShardWriter(out, "train", "latent", samples_per_shard=3) as writer:
        for i in range(6):
            image = np.full((16, 16, 3), 10 * i, np.uint8)
            sample = {
                "__key__": f"s{i:03d}",
                "image.jpg": encode_jpeg(image),
                "txt": f"pick {i}",
                "latent.npy": np.array([i, i + 1], np.int64),
                "json": {"action": [0.5, float(i)]},
                "action.npy": np.array([0.5, i], np.float32),
            }
            if corrupt == "jpeg" and i == 4:
                sample["image.jpg"] = sample["image.jpg"][:40]
            if corrupt == "field" and i == 4:
                del sample["txt"]
            writer.write(sample)
    write_shard_dir_metadata(
        out, kind="latent", counts={"train": 6}, image_size=16, action_dim=2, num_tokens=2, vocab_size=8
    )
    return out


def test_foundation_and_low_level_batches(tmp_path):
    out = _demo_dir(tmp_path)
    assert read_info(out)["num_tokens"] == 2
    loader = make_loader(
        list_shards(out, "train"), "foundation", _cfg(image_size=16, batch_size=6), train=False
    )
    batch = next(iter(loader))
    assert batch["image"].shape == (6, 3, 16, 16) and batch["image"].dtype == torch.uint8
    assert batch["latent"].dtype == torch.int64 and batch["latent"][:, 1].tolist() == [1, 2, 3, 4, 5, 6]
    assert batch["text"] == [f"pick {i}" for i in range(6)]
    assert batch["action"].shape == (6, 2) and batch["action"][:, 1].tolist() == list(range(6))
    low = next(
        iter(
            make_loader(
                list_shards(out, "train"), "low_level", _cfg(image_size=24, batch_size=6), train=False
            )
        )
    )
    assert low["image"].shape == (6, 3, 24, 24) and low["action"].dtype == torch.float32
    assert set(low) == {"image", "text", "action", "key", "episode_id"}


@pytest.mark.parametrize("corrupt", ["jpeg", "field"])
def test_corrupt_sample_raises_or_is_skipped(tmp_path, corrupt, caplog):
    out = _demo_dir(tmp_path, corrupt)
    shards = list_shards(out, "train")
    with pytest.raises(ShardReadError, match=r"latent-train-000001\.tar.*s004"):
        list(make_loader(shards, "foundation", _cfg(image_size=16, batch_size=1), train=False))
    ds = make_dataset(shards, "foundation", _cfg(image_size=16, batch_size=1, on_error="skip"), train=False)
    keys = [b["key"][0] for b in ds]
    assert keys == ["s000", "s001", "s002", "s003", "s005"] and ds.skipped == 1
    assert "latent-train-000001.tar" in caplog.text


def test_truncated_tar_raises_or_is_skipped(pair_dir, tmp_path, caplog):
    shards = list_shards(pair_dir, "train")
    data = open(shards[0], "rb").read()
    broken = tmp_path / "broken.tar"
    broken.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(ShardReadError, match="broken.tar"):
        list(make_loader([str(broken), *shards[1:]], "laq", _cfg(batch_size=1), train=False))
    ds = make_dataset([str(broken), *shards[1:]], "laq", _cfg(batch_size=1, on_error="skip"), train=False)
    keys = [b["key"][0] for b in ds]
    assert ds.skipped >= 1 and "broken.tar" in caplog.text
    with tarfile.open(shards[0]) as tar:
        complete = {n.split(".")[0] for n in tar.getnames()}
    rest = {k for b in make_loader(shards[1:], "laq", _cfg(batch_size=1), train=False) for k in b["key"]}
    assert rest <= set(keys) and len(set(keys) - rest) < len(complete)


def test_a_truncated_tar_is_named_at_the_front_of_every_message(pair_dir, tmp_path, caplog):
    shards = list_shards(pair_dir, "train")
    data = open(shards[0], "rb").read()
    broken = tmp_path / "broken.tar"
    broken.write_bytes(data[: len(data) // 2 + 100])  # ends inside a member: "unexpected end of data"
    with pytest.raises(ShardReadError) as err:
        list(make_loader([str(broken)], "laq", _cfg(batch_size=1), train=False))
    assert str(err.value) == f"{broken}: unreadable shard data: ReadError: unexpected end of data"
    caplog.clear()
    list(make_dataset([str(broken)], "laq", _cfg(batch_size=1, on_error="skip"), train=False))
    skips = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skips and all(f": {broken}: unreadable shard data: ReadError: " in m for m in skips), skips
    assert not any("BufferedReader" in m or ": ?:" in m for m in skips), skips


def test_a_worker_error_prints_as_its_message_without_the_worker_traceback(pair_dir, tmp_path):
    from lapa.commands import error_message

    data = open(list_shards(pair_dir, "train")[0], "rb").read()
    broken = tmp_path / "broken.tar"
    broken.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(ShardReadError) as err:  # torch re-raises it with the worker's traceback
        list(make_loader([str(broken)], "laq", _cfg(batch_size=1, num_workers=1), train=False))
    assert "Original Traceback" in str(err.value)
    assert error_message(err.value) == (
        f"{broken}: unreadable shard data: ReadError: unexpected end of data (in DataLoader worker process 0)"
    )
    assert error_message(ValueError("a\nCaught nothing")) == "a\nCaught nothing"


def test_missing_inputs_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_shards(tmp_path / "nowhere", "train")
    with pytest.raises(FileNotFoundError, match="info.json"):
        read_info(tmp_path)
    with pytest.raises(FileNotFoundError, match="gone.tar"):
        make_dataset([str(tmp_path / "gone.tar")], "laq", _cfg(), train=False)
    with pytest.raises(ValueError, match="unknown loader task"):
        make_dataset(list_shards(_demo_dir(tmp_path), "train"), "vla", _cfg(), train=False)
    with pytest.raises(ValueError, match="horizontal_flip"):
        make_dataset(
            list_shards(tmp_path / "latent", "train"),
            "low_level",
            _cfg(augment=True, horizontal_flip=True),
            train=True,
        )


def test_flip_drops_the_action_it_would_contradict(pair_dir):
    cfg = _cfg(
        batch_size=1, augment=True, horizontal_flip=True, color_jitter=0.0, random_resized_crop_scale=1.0
    )
    plain = {b["key"][0]: b for b in make_dataset(pair_dir, "laq", _cfg(batch_size=1), train=True)}
    flipped = kept = 0
    for b in make_dataset(pair_dir, "laq", cfg, train=True, seed=2):
        ref = plain[b["key"][0]]
        if not ref["has_action"][0]:
            continue
        if torch.equal(b["frame_t"], ref["frame_t"]):
            kept += 1
            assert b["has_action"][0] and torch.equal(b["action"], ref["action"])
        else:
            flipped += 1
            assert torch.equal(b["frame_t"], ref["frame_t"].flip(-1))
            assert not b["has_action"][0] and torch.isnan(b["action"]).all()
    assert flipped and kept


# -- the decode -> augment -> collate path against the straightforward formulation --------------


def _reference_augment(aug, frames, rng):
    """FrameAugment written plainly: contiguous resize, float(), torch's cast (the values to keep)."""
    import torch.nn.functional as F

    from lapa.data.transforms import _LUMA

    _, _, h, w = frames.shape
    if aug.scale < 1.0:
        area = rng.uniform(aug.scale, 1.0)
        ratio = rng.uniform(0.9, 1.1)
        ch = min(h, max(1, round((area * h * w / ratio) ** 0.5)))
        cw = min(w, max(1, round((area * h * w * ratio) ** 0.5)))
        top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
        frames = frames[:, :, top : top + ch, left : left + cw]
    if tuple(frames.shape[-2:]) != (aug.size, aug.size):
        x = frames.contiguous(memory_format=torch.channels_last)
        frames = F.interpolate(
            x, size=(aug.size, aug.size), mode="bilinear", antialias=True, align_corners=False
        ).contiguous()
    if aug.jitter > 0:
        j = aug.jitter
        b, c, s = (rng.uniform(1 - j, 1 + j) for _ in range(3))
        x = frames.float()
        n, _, fh, fw = x.shape
        gray = (_LUMA @ x.view(n, 3, fh * fw)).view(n, 1, fh, fw)
        mean = float(gray.mean())
        x.mul_(s * c * b).add_(gray, alpha=c * b * (1 - s)).add_(b * (1 - c) * mean + 0.5)
        frames = x.clamp_(0, 255).to(torch.uint8)
    flipped = bool(aug.flip and rng.random() < 0.5)
    return (frames.flip(-1) if flipped else frames), flipped


def _reference_images(self, jpegs, rng):
    """ShardDataset._images written plainly: one array per JPEG, np.stack, contiguous resize."""
    from lapa.data.codec import decode_jpeg
    from lapa.data.images import resize_square

    frames = torch.from_numpy(np.stack([decode_jpeg(j) for j in jpegs])).permute(0, 3, 1, 2)
    if self.augment is not None:
        return _reference_augment(self.augment, frames, rng)
    return resize_square(frames, self.image_size), False


def _same_batches(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want) > 0
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(b[key], torch.Tensor):
                assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
                assert a[key].is_contiguous() and b[key].is_contiguous(), key
                # exact equality, NaN (a missing action) equal to NaN
                assert torch.allclose(a[key], b[key], rtol=0, atol=0, equal_nan=True), key
            else:
                assert a[key] == b[key], key


@pytest.mark.parametrize(
    "loader_kw",
    [
        dict(augment=False),
        dict(augment=False, image_size=24),
        dict(augment=True, color_jitter=0.3, random_resized_crop_scale=0.5),
        dict(augment=True, color_jitter=0.0, random_resized_crop_scale=0.7),
        dict(augment=True, color_jitter=0.2, random_resized_crop_scale=1.0, horizontal_flip=True),
    ],
)
def test_batches_identical_to_the_plain_path(pair_dir, monkeypatch, loader_kw):
    """Decoding into one buffer, channels-last frames until collate and the faster jitter cast change
    no batch: same samples in the same order, dtypes, shapes and values, in the main process and
    through a worker's shared-memory collate."""
    from lapa.data.pipeline import ShardDataset

    cfg = _cfg(batch_size=5, shuffle_buffer=6, **loader_kw)

    def batches(num_workers):
        loader = make_loader(pair_dir, "laq", cfg, train=True, seed=4, num_workers=num_workers)
        loader.dataset.set_epoch(1)  # worker 0 of 1 and the main process then draw the same order
        return [dict(b) for b in loader]

    fast = batches(0)
    in_worker = batches(1)
    monkeypatch.setattr(ShardDataset, "_images", _reference_images)
    plain = batches(0)
    _same_batches(fast, plain)
    _same_batches(in_worker, plain)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last_view"])
@pytest.mark.parametrize(("scale", "jitter", "size"), [(0.6, 0.3, 32), (0.8, 0.0, 24), (1.0, 0.25, 40)])
def test_frame_augment_values_match_the_plain_formulation(layout, scale, jitter, size):
    import random

    from lapa.data.transforms import FrameAugment

    gen = np.random.default_rng(0)
    aug = FrameAugment(size, scale=scale, jitter=jitter, flip=True)
    for seed in range(12):
        hwc = torch.from_numpy(gen.integers(0, 256, (2, 36, 36, 3), dtype=np.uint8))
        frames = hwc.permute(0, 3, 1, 2)  # the decoder's memory seen as [N,3,H,W]
        if layout == "contiguous":
            frames = frames.contiguous()
        got, flipped = aug(frames, random.Random(seed))
        want, want_flipped = _reference_augment(aug, frames, random.Random(seed))
        assert flipped == want_flipped and got.dtype == torch.uint8 and got.shape == (2, 3, size, size)
        assert torch.equal(got, want)
        if jitter > 0:
            assert got.is_contiguous()


def test_decode_jpegs_into_one_buffer():
    from lapa.data.codec import decode_jpeg, decode_jpegs

    gen = np.random.default_rng(1)
    images = [gen.integers(0, 256, (20, 28, 3), dtype=np.uint8) for _ in range(3)]
    jpegs = [encode_jpeg(i) for i in images]
    out = decode_jpegs(jpegs)
    assert out.shape == (3, 20, 28, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.array_equal(out, np.stack([decode_jpeg(j) for j in jpegs]))
    smaller = encode_jpeg(gen.integers(0, 256, (12, 28, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="frame 1 is 12x28, frame 0 is 20x28"):
        decode_jpegs([jpegs[0], smaller])
    with pytest.raises(ValueError, match="too small"):
        decode_jpegs([smaller, jpegs[0]])
    with pytest.raises(ValueError):
        decode_jpegs([b"not a jpeg"])


def test_resample_channels_last_keeps_values():
    from lapa.data.images import resample

    x = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (2, 30, 30, 3), dtype=np.uint8))
    frames = x.permute(0, 3, 1, 2)
    plain = resample(frames, 20, 24)
    kept = resample(frames, 20, 24, contiguous=False)
    assert plain.is_contiguous() and kept.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(plain, kept) and kept.shape == (2, 3, 20, 24)


def test_a_sample_with_frames_of_two_sizes_is_corrupt(tmp_path):
    out = tmp_path / "pairs"
    gen = np.random.default_rng(3)
    with ShardWriter(out, "train", "pairs", samples_per_shard=4) as writer:
        for i in range(3):
            t1 = gen.integers(0, 256, (16 if i != 1 else 12, 16, 3), dtype=np.uint8)
            writer.write(
                {
                    "__key__": f"p{i:03d}",
                    "t.jpg": encode_jpeg(gen.integers(0, 256, (16, 16, 3), dtype=np.uint8)),
                    "t1.jpg": encode_jpeg(t1),
                    "json": {"video_id": "v", "frame_index": i},
                }
            )
    write_shard_dir_metadata(out, kind="pairs", counts={"train": 3}, image_size=16, action_dim=None)
    shards = list_shards(out, "train")
    with pytest.raises(ShardReadError, match=r"p001.*frame 1 is 12x16"):
        list(make_loader(shards, "laq", _cfg(image_size=16, batch_size=1), train=False))
    ds = make_dataset(shards, "laq", _cfg(image_size=16, batch_size=1, on_error="skip"), train=False)
    assert [b["key"][0] for b in ds] == ["p000", "p002"] and ds.skipped == 1
