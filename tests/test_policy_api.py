"""The policy directory: loading without pickle, determinism, shared preprocessing, ONNX, eval-offline."""

from __future__ import annotations

import io
import json
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures.policy import make_tiny_inputs, make_untrained_policy, tiny_config


@pytest.fixture(scope="module")
def policy_setup(tmp_path_factory):
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("policy")
    cfg = tiny_config()
    inputs = make_tiny_inputs(root, cfg)
    path = make_untrained_policy(cfg, inputs, root / "policy")
    return root, cfg, inputs, path


@pytest.fixture(scope="module")
def policy(policy_setup):
    from lapa.policy import LAPAPolicy

    return LAPAPolicy.from_pretrained(policy_setup[3])


def test_loading_never_unpickles(policy_setup, monkeypatch):
    from lapa.policy import LAPAPolicy

    path = policy_setup[3]
    files = [p.name for p in path.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))], files

    def refuse(*args, **kwargs):
        raise AssertionError("policy loading tried to unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    policy = LAPAPolicy.from_pretrained(path)
    assert policy.action_dim == 4


def test_bad_policy_directories_name_the_file(policy_setup, tmp_path):
    import shutil

    from lapa.policy import LAPAPolicy

    with pytest.raises(FileNotFoundError, match="policy directory not found"):
        LAPAPolicy.from_pretrained(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(policy_setup[3], broken)
    (broken / "action_stats.json").unlink()
    with pytest.raises(FileNotFoundError, match="action_stats.json"):
        LAPAPolicy.from_pretrained(broken)
    shutil.copy(policy_setup[3] / "action_stats.json", broken / "action_stats.json")
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        LAPAPolicy.from_pretrained(broken)


def test_cut_or_incomplete_policy_files_name_the_file_and_key(policy_setup, tmp_path):
    import shutil

    from lapa.policy import LAPAPolicy

    src = policy_setup[3]

    def copy(name: str):
        out = tmp_path / name
        shutil.copytree(src, out)
        return out

    cut = copy("cut")
    data = (src / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=rf"{cut / 'model.safetensors'}: unreadable weights"):
        LAPAPolicy.from_pretrained(cut)
    for name, key, value in (
        ("preprocessor_config.json", "image_size", None),
        ("preprocessor_config.json", "shard_crop", "64"),
        ("config.json", "num_bins", 0),
    ):
        broken = copy(f"{name}-{key}")
        blob = json.loads((src / name).read_text())
        if value is None:
            del blob[key]
        else:
            blob[key] = value
        (broken / name).write_text(json.dumps(blob))
        with pytest.raises(
            ValueError, match=rf"{broken / name}: {key} must be an integer >= 1, got {value!r}"
        ):
            LAPAPolicy.from_pretrained(broken)
    no_foundation = copy("no-foundation")
    blob = json.loads((src / "config.json").read_text())
    del blob["foundation"]
    (no_foundation / "config.json").write_text(json.dumps(blob))
    with pytest.raises(ValueError, match="the foundation section .* is missing"):
        LAPAPolicy.from_pretrained(no_foundation)


def test_predict_shapes_inputs_and_determinism(policy):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    a1 = policy.predict(image, "open the drawer")
    a2 = policy.predict(Image.fromarray(image), "open the drawer")
    assert a1.shape == (4,) and a1.dtype == np.float32
    np.testing.assert_array_equal(a1, a2)  # numpy and PIL give the same action
    np.testing.assert_array_equal(a1, policy.predict(image, "open the drawer"))  # deterministic
    camera = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)  # any camera size is resized and cropped
    batch = policy.predict_batch(
        [image, camera, image], ["open the drawer", "push the block", "open the drawer"]
    )
    assert batch.shape == (3, 4)
    np.testing.assert_array_equal(batch[0], a1)  # batching does not change an action
    np.testing.assert_array_equal(batch[2], a1)
    with pytest.raises(ValueError, match="instruction"):
        policy.predict(image, "")
    with pytest.raises(TypeError, match="uint8"):
        policy.predict(image.astype(np.float32), "open the drawer")


def test_policy_preprocessing_equals_the_training_batch_path(policy_setup, policy):
    """policy.predict on raw images == the model on a loader batch through VLAProcessor."""
    from lapa.data.pipeline import list_shards, make_loader

    _, cfg, inputs, _ = policy_setup
    shard = list_shards(inputs["shards"], "val")[0]
    batch = next(iter(make_loader([shard], "low_level", cfg.data.loader, train=False)))
    raw = {}  # the same samples as a user holds them: decoded JPEGs
    with tarfile.open(shard) as tar:
        for m in tar:
            if m.name.endswith(".image.jpg"):
                raw[m.name[: -len(".image.jpg")]] = np.asarray(
                    Image.open(io.BytesIO(tar.extractfile(m).read()))
                )
    images = [raw[k] for k in batch["key"]]
    torch.testing.assert_close(policy.prepare_images(images), batch["image"], rtol=0, atol=0)
    training_path = policy.stats.dequantize(policy.bins_from_tensors(batch["image"], batch["text"]))
    np.testing.assert_array_equal(policy.predict_batch(images, batch["text"]), training_path)


def test_onnx_export_agrees_with_pytorch(policy_setup, policy, tmp_path):
    from lapa.commands import main
    from lapa.policy.export import INPUT_NAMES, example_inputs, onnx_logits

    out = tmp_path / "model.onnx"
    with pytest.raises(SystemExit) as exc:
        main(["export", "--policy", str(policy_setup[3]), "--out", str(out)])
    assert exc.value.code == 0 and out.is_file()
    # other batch size and text lengths than at export time
    inputs = example_inputs(policy, batch=3, instructions=["a", "push the block to the goal now", "open"])
    with torch.no_grad():
        ref = policy.model(*(inputs[k] for k in INPUT_NAMES)).numpy()
    got = onnx_logits(out, inputs)
    assert got.shape == (3, 4, 256)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_eval_offline_writes_metrics_and_plot(policy_setup, tmp_path):
    from lapa.commands import main

    _, _, inputs, path = policy_setup
    out = tmp_path / "eval"
    argv = [
        "eval-offline",
        "--policy",
        str(path),
        "--shards",
        str(inputs["shards"]),
        "--out",
        str(out),
        "-c",
        "tiny",
        "data.loader.num_workers=0",
    ]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["num_samples"] > 0 and len(metrics["mse_per_dim"]) == 4
    assert 0 <= metrics["bin_accuracy"] <= 1 and metrics["mse"] >= 0
    assert 1 <= len(metrics["plotted_episodes"]) <= 3
    assert (out / "actions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".eval.tmp-*"))


def test_instruction_tokens_are_remembered_within_a_bound(policy, monkeypatch):
    import lapa.policy.policy as module

    monkeypatch.setattr(module, "TEXT_CACHE_SIZE", 3)
    policy._text_cache.clear()
    texts = ["open the drawer", "push the block to the goal"]
    ids, mask = policy.text_inputs(texts)
    ref_ids, ref_mask = policy.processor.text(texts)
    torch.testing.assert_close(ids, ref_ids, rtol=0, atol=0)
    torch.testing.assert_close(mask, ref_mask, rtol=0, atol=0)
    calls = []
    tokenize = policy.processor.text
    monkeypatch.setattr(policy.processor, "text", lambda t: calls.append(list(t)) or tokenize(t))
    assert policy.text_inputs(texts)[0] is ids and calls == []  # the second time: no tokenising
    for i in range(5):
        policy.text_inputs([f"task number {i}"])
    assert len(policy._text_cache) == 3 and len(calls) == 5


def test_predict_scales_16_bit_and_float_images_to_8_bits(policy):
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    expected = policy.predict(image, "open the drawer")
    assert not np.array_equal(expected, policy.predict(np.full_like(image, 255), "open the drawer"))
    wide = image.astype(np.uint16) * 257  # 16-bit value v * 257 is 8-bit value v
    np.testing.assert_array_equal(policy.predict(wide, "open the drawer"), expected)
    np.testing.assert_array_equal(
        policy.predict(Image.fromarray(wide[..., 0]), "open the drawer"),
        policy.predict(np.repeat(image[..., :1], 3, -1), "open the drawer"),
    )
    np.testing.assert_array_equal(policy.predict(image / 255.0, "open the drawer"), expected)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        policy.predict(image.astype(np.float32), "open the drawer")  # float beyond [0, 1]: refused
