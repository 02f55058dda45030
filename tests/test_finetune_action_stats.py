"""Action statistics: round trip, constant and binary dimensions, readable JSON, 4-D and 7-D."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from lapa.data.action_codec import ActionStats
from lapa.data.shard_reader import read_shard_actions


def _demo_actions(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    actions = rng.normal(0.0, 0.3, size=(n, dim)).astype(np.float32)
    actions[:, -1] = np.where(rng.random(n) < 0.7, -1.0, 1.0)  # a binary gripper
    return actions


@pytest.mark.parametrize("dim", [4, 7])
def test_roundtrip_within_one_bin(dim):
    actions = _demo_actions(5000, dim)
    stats = ActionStats.from_actions(actions, 0.01, 0.99, 256)
    assert stats.action_dim == dim and stats.num_bins == 256
    assert stats.kinds == ["continuous"] * (dim - 1) + ["binary"]
    inside = np.all((actions >= stats.low) & (actions <= stats.high), axis=1)
    assert inside.mean() > 0.8  # 2% per dimension lies outside the quantiles
    x = actions[inside]
    bins = stats.quantize(x)
    assert bins.dtype == np.int64 and bins.min() >= 0 and bins.max() <= 255
    back = stats.dequantize(bins)
    assert back.dtype == np.float32 and back.shape == x.shape
    err = np.abs(back.astype(np.float64) - x)
    assert np.all(err[:, :-1] <= stats.bin_width[:-1] + 1e-6)
    assert np.all(err[:, :-1] / stats.range[:-1] < 0.01)
    np.testing.assert_array_equal(back[:, -1], x[:, -1])  # binary exactly


def test_out_of_range_is_clipped_and_dequantize_is_bin_centre():
    stats = ActionStats.from_actions(np.linspace(-1, 1, 1001)[:, None], 0.0, 1.0, 256)
    bins = stats.quantize(np.array([[-5.0], [5.0], [-1.0], [1.0]]))
    assert bins[:, 0].tolist() == [0, 255, 0, 255]
    centres = stats.dequantize(np.arange(256)[:, None])[:, 0]
    np.testing.assert_allclose(centres, -1 + (np.arange(256) + 0.5) * 2 / 256, atol=1e-6)
    np.testing.assert_array_equal(stats.quantize(centres[:, None])[:, 0], np.arange(256))


def test_constant_and_binary_dims_roundtrip_exactly():
    rng = np.random.default_rng(1)
    n = 1000
    grip = np.full(n, -1.0, dtype=np.float32)
    grip[:5] = 1.0  # rarer than the 1% quantile: still two values
    actions = np.stack([rng.uniform(-1, 1, n), np.full(n, 0.25), grip, np.zeros(n)], axis=1).astype(
        np.float32
    )
    with np.errstate(all="raise"):  # no division by zero anywhere
        stats = ActionStats.from_actions(actions)
        assert stats.kinds == ["continuous", "constant", "binary", "constant"]
        assert stats.bin_width[1] == 0 and stats.bin_width[3] == 0
        back = stats.dequantize(stats.quantize(actions))
        norm = stats.normalize(actions)
    np.testing.assert_array_equal(back[:, 1:], actions[:, 1:])
    assert np.all(np.isfinite(norm)) and np.all(norm[:, 1] == 0) and set(norm[:, 2].tolist()) == {-1.0, 1.0}


def test_rare_closing_ramp_keeps_plus_one_representable(caplog):
    """2000 frames whose gripper is -1 except a 14-frame closing ramp (0, 0.5, then 1.0): the
    quantiles both sit at -1, yet +1 must still decode near +1 (the policy has to be able to close)."""
    rng = np.random.default_rng(2)
    n = 2000
    grip = np.full(n, -1.0)
    grip[1000:1014] = [0.0, 0.5] + [1.0] * 12
    actions = np.column_stack([rng.uniform(-1, 1, (n, 3)), grip])
    with caplog.at_level("WARNING", logger="lapa.data.action_codec"):
        stats = ActionStats.from_actions(actions, 0.01, 0.99, 256)
    assert stats.kinds[3] == "continuous" and stats.low[3] == -1.0 and stats.high[3] == 1.0
    for value in (1.0, 0.5, 0.0, -1.0):
        back = stats.dequantize(stats.quantize(np.array([[0.0, 0.0, 0.0, value]])))[0, 3]
        assert abs(back - value) <= stats.bin_width[3], (value, back)
    assert stats.summary[3]["clipped_fraction"] == 0.0
    assert not [r for r in caplog.records if "dimension 3" in r.getMessage()]


def test_repeated_values_beyond_the_quantiles_are_kept_and_a_clipped_tail_is_named(caplog, tmp_path):
    rng = np.random.default_rng(3)
    n = 5000
    saturated = np.clip(rng.normal(-0.3, 0.4, n), -1, 1)
    saturated[:30] = 1.0  # 0.6% of the frames at full speed, above the 99% quantile
    tail = rng.uniform(-0.5, 0.5, n)
    tail[:40] = rng.uniform(3, 4, 40)  # a continuous tail of 0.8% far beyond the quantile
    with caplog.at_level("WARNING", logger="lapa.data.action_codec"):
        stats = ActionStats.from_actions(np.column_stack([saturated, tail]), 0.0, 0.99, 256)
    assert stats.high[0] == 1.0 and stats.summary[0]["clipped_fraction"] == 0.0
    assert abs(stats.dequantize(stats.quantize(np.array([[1.0, 0.0]])))[0, 0] - 1.0) <= stats.bin_width[0]
    assert stats.high[1] < 1.0 and stats.summary[1]["clipped_fraction"] == pytest.approx(0.008)
    messages = [r.getMessage() for r in caplog.records]
    assert any("action dimension 1: 0.80%" in m for m in messages), messages
    assert not any("action dimension 0" in m for m in messages)
    stats.save(tmp_path / "stats.json")
    dims = json.loads((tmp_path / "stats.json").read_text())["dimensions"]
    assert dims[1]["clipped_fraction"] == pytest.approx(0.008)
    assert ActionStats.load(tmp_path / "stats.json").summary[1]["clipped_fraction"] == pytest.approx(0.008)


def test_json_is_readable_and_roundtrips(tmp_path):
    actions = _demo_actions(300, 7, seed=3)
    stats = ActionStats.from_actions(actions, 0.02, 0.98, 128)
    path = tmp_path / "sub" / "action_stats.json"
    stats.save(path)
    data = json.loads(path.read_text())
    assert data["action_dim"] == 7 and data["num_bins"] == 128 and data["low_quantile"] == 0.02
    assert [d["kind"] for d in data["dimensions"]][-1] == "binary"
    loaded = ActionStats.load(path)
    assert loaded == stats
    np.testing.assert_array_equal(loaded.quantize(actions), stats.quantize(actions))
    assert not list(path.parent.glob(".*tmp*"))  # atomic write left no temporary file


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="NaN"):
        ActionStats.from_actions(np.array([[0.0], [np.nan]]))
    with pytest.raises(ValueError, match=r"\[N, A\]"):
        ActionStats.from_actions(np.zeros(5))
    bad = tmp_path / "stats.json"
    bad.write_text('{"format": "lapa.action_stats", "action_dim": 1}')
    with pytest.raises(ValueError, match=str(bad)):
        ActionStats.load(bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        ActionStats.load(tmp_path / "missing.json")
    stats = ActionStats.from_actions(_demo_actions(50, 4))
    with pytest.raises(ValueError, match="action_dim=4"):
        stats.quantize(np.zeros((2, 7)))


def _write_tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a, dtype=np.float32))
    return buf.getvalue()


def test_shard_reader_and_cli(tmp_path):
    from lapa.commands import main

    shards = tmp_path / "demos"
    (shards / "train").mkdir(parents=True)
    actions = _demo_actions(40, 4, seed=5)
    _write_tar(
        shards / "train" / "demos-train-000000.tar",
        {f"s{i:04d}.action.npy": _npy(a) for i, a in enumerate(actions)} | {"s0000.txt": b"reach"},
    )
    got, report = read_shard_actions(shards)
    np.testing.assert_array_equal(got, actions)
    assert report["samples"] == 40 and report["skipped"] == 0

    out = tmp_path / "action_stats.json"
    with pytest.raises(SystemExit) as exc:
        main(["action-stats", "--shards", str(shards), "--out", str(out), "finetune.stats.num_bins=64"])
    assert exc.value.code == 0
    stats = ActionStats.load(out)
    assert stats.action_dim == 4 and stats.num_bins == 64

    _write_tar(shards / "train" / "demos-train-000001.tar", {"bad.action.npy": b"not numpy"})
    with pytest.raises(ValueError, match="demos-train-000001.tar:bad.action.npy"):
        read_shard_actions(shards)
    got, report = read_shard_actions(shards, on_error="skip")
    assert len(got) == 40 and report["skipped"] == 1
