"""Validation reads the whole val split, or a seeded sample stratified by task, split exactly over ranks;
chance levels beside the accuracies; code statistics gathered over ranks equal one process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from lapa.config.data import LoaderConfig
from lapa.data.codec import encode_jpeg
from lapa.data.pipeline import make_loader, share_bounds, stratified_sample, validation_set
from lapa.data.shards import ShardDirBuilder
from lapa.foundation.metrics import LatentAccuracy
from lapa.laq import metrics as M

REPO = Path(__file__).resolve().parents[1]
# shard order puts all of "reach" first: a prefix of 40 samples would validate on one task only
TASK_BLOCKS = (("reach", 40), ("push", 12), ("drawer", 8))
SIZE = 16


def _val_split(root: Path, blocks=TASK_BLOCKS, samples_per_shard: int = 10) -> Path:
    """A labelled (latent) shard directory whose val split holds ``blocks`` of tasks in shard order."""
    rng = np.random.default_rng(0)
    builder = ShardDirBuilder(root, "latent", image_size=SIZE, samples_per_shard=samples_per_shard)
    i = 0
    for task, count in blocks:
        for _ in range(count):
            image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            sample = {
                "__key__": f"val{i:05d}",
                "image.jpg": encode_jpeg(image),
                "txt": f"do the {task} task",
                "latent.npy": rng.integers(0, 8, size=4).astype(np.int64),
                "json": {"video_id": f"{task}-{i // 5}", "frame_index": i % 5, "task": task, "action": None},
            }
            builder.write("val", sample, episode_id=f"{task}-{i // 5}")
            i += 1
    builder.write("train", {**sample, "__key__": "train00000"}, episode_id="t")
    builder.finish(action_dim=None, num_tokens=4, vocab_size=8)
    return root


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    return _val_split(tmp_path_factory.mktemp("val") / "shards")


def _cfg(batch_size: int = 4, workers: int = 0) -> LoaderConfig:
    return LoaderConfig(batch_size=batch_size, num_workers=workers, image_size=SIZE, augment=False)


def test_a_capped_sample_covers_every_task_although_shard_order_puts_one_first(split):
    every = validation_set(split)
    assert len(every) == every.split_size == 60 and every.limit is None
    first = [t for t in every.tasks[:20]]
    assert set(first) == {"reach"}  # what a prefix of 20 would have validated on
    sample = validation_set(split, 20, seed=7)
    counts = Counter(sample.tasks)
    # proportional (40:12:8 of 60 -> 13.3 : 4 : 2.7), at least one each, largest remainders
    assert counts == {"reach": 13, "push": 4, "drawer": 3}
    assert sample.summary()["tasks"] == {"drawer": [3, 8], "push": [4, 12], "reach": [13, 40]}
    assert set(sample.entries) <= set(every.entries) and len(set(sample.entries)) == 20
    assert sample.entries == tuple(sorted(sample.entries, key=every.entries.index))  # in shard order
    # the same samples at every call with the seed (every validation of a run, every arm), others without
    assert validation_set(split, 20, seed=7) == sample
    assert validation_set(split, 20, seed=8).entries != sample.entries
    # the loader reads exactly those samples
    keys = [
        k for b in make_loader(sample.shards, "foundation", _cfg(), False, entries=sample) for k in b["key"]
    ]
    assert sorted(keys) == sorted(k for _, k in sample.entries)


def test_stratified_sample_allocation():
    strata = ["a"] * 90 + ["b"] * 9 + ["c"]
    idx = stratified_sample(strata, 10, seed=0)
    assert Counter(strata[i] for i in idx) == {"a": 8, "b": 1, "c": 1}
    assert np.array_equal(idx, np.sort(idx)) and len(set(idx.tolist())) == 10
    assert np.array_equal(stratified_sample(strata, None, 0), np.arange(100))
    assert np.array_equal(stratified_sample(strata, 500, 0), np.arange(100))
    two = stratified_sample(strata, 2, seed=3)  # fewer samples than tasks: two tasks, one sample each
    assert len({strata[i] for i in two}) == 2
    with pytest.raises(ValueError, match="val_samples must be None"):
        validation_set(["/nonexistent.tar"], 0)


@pytest.mark.parametrize(("world", "workers"), [(1, 0), (2, 0), (3, 2), (4, 1)])
def test_ranks_read_disjoint_parts_that_cover_the_set_once(split, world, workers):
    for vset in (validation_set(split), validation_set(split, 25, seed=1)):
        seen = []
        for rank in range(world):
            loader = make_loader(
                vset.shards, "foundation", _cfg(4, workers), False, entries=vset, rank=rank, world_size=world
            )
            keys = [k for batch in loader for k in batch["key"]]
            assert len(keys) == vset.count(rank, world)
            seen.extend(keys)
        assert sorted(seen) == sorted(k for _, k in vset.entries)  # each exactly once
    sizes = [np.subtract(*share_bounds(61, r, 4)[::-1]) for r in range(4)]
    assert sum(sizes) == 61 and max(sizes) - min(sizes) <= 1


def test_whole_split_validation_counts_every_sample(split):
    """The LAQ and finetuning loader path: a split of N samples gives N rows at any batch size."""
    vset = validation_set(split)
    for batch_size in (7, 60, 64):
        loader = make_loader(vset.shards, "foundation", _cfg(batch_size), False, entries=vset)
        assert sum(len(b["key"]) for b in loader) == 60


def test_latent_accuracy_reports_majority_and_uniform_chance():
    """Targets 70% one code at position 0: majority 0.7; a model always predicting it scores 0.7."""
    vocab = 8
    targets = torch.tensor([[2, 0]] * 7 + [[5, 1], [6, 1], [7, 3]])  # [10, 2]
    logits = torch.full((10, 2, vocab), -5.0)
    logits[:, 0, 2] = 5.0  # position 0: always code 2
    logits[:, 1, 0], logits[:, 1, 1], logits[:, 1, 3] = 5.0, 4.0, 3.0  # position 1: 0 then 1 then 3
    acc = LatentAccuracy(2, vocab)
    acc.update(logits[:6], targets[:6], 0.0)
    acc.update(logits[6:], targets[6:], 0.0)  # counts add over batches (and ranks)
    out = acc.compute()
    assert out["samples"] == 10
    assert out["top1_acc_pos0"] == pytest.approx(0.7) and out["top1_majority_pos0"] == pytest.approx(0.7)
    assert out["top1_majority_pos1"] == pytest.approx(0.7)  # code 0 seven times
    assert out["top3_majority_pos0"] == pytest.approx(0.9)  # codes 2, and two of 5/6/7
    assert out["top3_majority_pos1"] == pytest.approx(1.0)  # codes 0, 1, 3
    assert out["top1_majority"] == pytest.approx(0.7) and out["top3_majority"] == pytest.approx(0.95)
    assert out["top1_uniform"] == pytest.approx(1 / 8) and out["top3_uniform"] == pytest.approx(3 / 8)
    assert out["top3_acc_pos1"] == pytest.approx(1.0)
    summed = acc.counts + acc.counts  # two ranks holding the same rows: the rates are unchanged
    assert acc.compute(summed)["top1_majority"] == pytest.approx(0.7) and acc.compute(summed)["samples"] == 20


def test_code_utilisation_is_over_the_whole_validated_set():
    """The first half of a split uses codes 0-3, the second 4-7: a prefix shows 50%, the whole set 100%."""
    i = np.arange(96)
    codes = np.stack([i % 4 + 4 * (i >= 48)] * 2, axis=1)  # [96, 2]: each code 12 times in all
    keys = np.array([f"k{j:03d}" for j in i])
    prefix = M.validation_code_logs({"codes": codes[:48], "key": keys[:48]}, 8, 4)
    whole = M.validation_code_logs(M.gather_rows({"codes": codes, "key": keys}), 8, 4)
    assert prefix["val/utilisation"] == pytest.approx(0.5) and whole["val/utilisation"] == pytest.approx(1.0)
    assert prefix["val/perplexity/pos0"] == pytest.approx(4.0)
    assert whole["val/perplexity/pos0"] == pytest.approx(8.0) and whole["val/samples"] == 96
    assert whole["val/perplexity_max"] == 8


GATHER_WORKER = r"""
import json, os, sys
import numpy as np, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[3])
from lapa.data.pipeline import make_loader, validation_set
from lapa.config.data import LoaderConfig
from lapa.laq import metrics as M
from lapa.laq.model import LAQModel

torch.set_num_threads(1)
world = int(os.environ.get("WORLD_SIZE", "1"))
if world > 1:
    dist.init_process_group("gloo")
rank = dist.get_rank() if world > 1 else 0
shards, out = sys.argv[1], sys.argv[2]
arch = json.loads(sys.argv[4])
torch.manual_seed(0)
model = LAQModel(arch).eval()
vset = validation_set(shards, None, seed=0)
cfg = LoaderConfig(batch_size=5, num_workers=0, image_size=arch["image_size"], augment=False)
rows = {"codes": [], "actions": [], "frames": [], "groups": [], "key": []}
for batch in make_loader(vset.shards, "laq", cfg, False, entries=vset):  # the rank comes from the group
    with torch.no_grad():
        rows["codes"].extend(model.predict_indices(batch["frame_t"], batch["frame_t1"]).numpy())
    rows["actions"].extend(batch["action"].numpy())
    rows["frames"].extend(M.frame_features(batch["frame_t"]))
    rows["groups"].extend(batch["video_id"])
    rows["key"].extend(batch["key"])
local_keys = list(rows["key"])
gathered = M.gather_rows({k: np.asarray(v) for k, v in rows.items()})
logs = M.validation_code_logs(gathered, arch["quantizer"]["vocab_size"], 4)
record = {"logs": logs, "local_keys": local_keys, "codes": gathered["codes"].tolist()}
if world > 1:  # the Fabric loops' lockstep over this rank's batches: unequal shares, equal steps
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy
    from lapa.utils.run import lockstep

    fabric = Fabric(accelerator="cpu", devices=world, strategy=DDPStrategy(process_group_backend="gloo"))
    fabric.launch()
    eleven = validation_set(shards, 11, seed=0)  # shares of 5 and 6: one batch of 5 and two
    loader = make_loader(eleven.shards, "laq", cfg, False, entries=eleven, rank=rank, world_size=world)
    steps = [(list(b["key"]), counted) for b, counted in lockstep(fabric, loader)]
    record["lockstep"] = {"steps": len(steps), "counted": [k for keys, c in steps if c for k in keys]}
    record["lockstep"]["repeats"] = sum(not c for _, c in steps)
with open(os.path.join(out, f"rank{rank}-of{world}.json"), "w") as fh:
    json.dump(record, fh)
if world > 1:
    dist.destroy_process_group()
"""


def test_two_ranks_gather_code_statistics_equal_to_one_process(tmp_path):
    """Two gloo processes each read half the val pairs; the gathered code statistics (utilisation,
    perplexity, code-action AMI, shortcut probe) equal those one process computes over the split."""
    from lapa.config import load_config
    from lapa.data.shards import write_pair_shards
    from lapa.laq.model import architecture_from_config
    from tests.fixtures.laq import sprite_episodes

    sharding = ["data.sharding.resize=32", "data.sharding.crop=32", "data.sharding.fps=null"]
    cfg = load_config(
        "default", [*sharding, "data.sharding.val_fraction=0.5", "data.sharding.samples_per_shard=7"]
    )
    shards = tmp_path / "pairs"
    write_pair_shards(sprite_episodes(8, length=9, seed=2), shards, cfg.data.sharding)
    tiny = load_config(
        "default",
        [
            "laq.image_size=32",
            "laq.encoder.base_channels=8",
            "laq.encoder.channel_multipliers=[1,2]",
            "laq.encoder.latent_dim=16",
            "laq.quantizer.embedding_dim=16",
            "laq.quantizer.lookup_dim=8",
            "laq.decoder.base_channels=8",
            "laq.decoder.channel_multipliers=[1,2]",
        ],
    )
    arch = json.dumps(architecture_from_config(tiny.laq))
    script = tmp_path / "worker.py"
    script.write_text(GATHER_WORKER)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    args = [str(script), str(shards), str(tmp_path), str(REPO), arch]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = subprocess.run([*launch, *args], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-4000:]
    one = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-4000:]

    single = json.loads((tmp_path / "rank0-of1.json").read_text())
    ranks = [json.loads((tmp_path / f"rank{r}-of2.json").read_text()) for r in (0, 1)]
    count = json.loads((shards / "info.json").read_text())["counts"]["val"]
    a, b = (set(r["local_keys"]) for r in ranks)
    assert a and b and not a & b and len(a | b) == count == len(single["local_keys"])  # disjoint, cover once
    assert single["logs"]["val/samples"] == count
    assert "val/code_action_ami" in single["logs"] and "val/probe_acc_codes" in single["logs"]
    # 11 samples in batches of 5 over two ranks (5 and 6): both step twice, one step repeats a batch uncounted
    assert [r["lockstep"]["steps"] for r in ranks] == [2, 2]
    assert sorted(r["lockstep"]["repeats"] for r in ranks) == [0, 1]
    counted = ranks[0]["lockstep"]["counted"] + ranks[1]["lockstep"]["counted"]
    assert len(counted) == len(set(counted)) == 11 and set(counted) <= a | b
    for r in ranks:
        assert r["codes"] == single["codes"]
        assert r["logs"].keys() == single["logs"].keys()
        for key, value in single["logs"].items():
            assert r["logs"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
