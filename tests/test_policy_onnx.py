"""The ONNX Runtime backend of LAPAPolicy: PyTorch's actions, its export cache, `lapa serve --backend`."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures.policy import INSTRUCTIONS, make_tiny_inputs, make_untrained_policy, tiny_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("onnx")
    cfg = tiny_config()
    inputs = make_tiny_inputs(root, cfg)
    path = make_untrained_policy(cfg, inputs, root / "policies" / "policy")
    return cfg, inputs, path


@pytest.fixture(scope="module")
def both(setup):
    from lapa.policy import LAPAPolicy

    path = setup[2]
    return LAPAPolicy.from_pretrained(path), LAPAPolicy.from_pretrained(path, backend="onnx")


def _observations(count: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    images, texts = [], []
    for i in range(count):
        h, w = (64, 64) if i % 3 == 0 else (int(rng.integers(48, 200)), int(rng.integers(48, 260)))
        images.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        texts.append(INSTRUCTIONS[i % len(INSTRUCTIONS)] + (" now" * (i % 4)))
    return images, texts


def test_onnx_backend_gives_the_pytorch_actions(both):
    torch_policy, onnx_policy = both
    assert torch_policy.backend == "torch" and onnx_policy.backend == "onnx" and onnx_policy.model is None
    images, texts = _observations()
    bins_t = torch_policy.predict_bins(images, texts)
    bins_o = onnx_policy.predict_bins(images, texts)
    np.testing.assert_array_equal(bins_o, bins_t)
    assert len({tuple(b) for b in bins_t}) > 1  # the inputs give different actions: the check can fail
    np.testing.assert_array_equal(
        onnx_policy.predict_batch(images, texts), torch_policy.predict_batch(images, texts)
    )
    for image, text in zip(images[:4], texts[:4]):  # batch 1, the serving path
        a = onnx_policy.predict(image, text)
        assert a.dtype == np.float32 and a.shape == (4,)
        np.testing.assert_array_equal(a, torch_policy.predict(image, text))
    prepared = torch_policy.prepare_images(images)
    logits_t = torch_policy.logits_from_tensors(prepared, texts)
    logits_o = onnx_policy.logits_from_tensors(prepared, texts)
    torch.testing.assert_close(logits_o, logits_t, atol=1e-4, rtol=0)


def test_the_export_is_cached_beside_the_policy_and_follows_its_weights(setup, both):
    from lapa.policy import LAPAPolicy
    from lapa.policy.policy import onnx_cache_path

    cfg, inputs, path = setup
    _, onnx_policy = both
    cache = onnx_cache_path(path)
    assert onnx_policy.onnx_path == cache and cache.is_file()
    assert (
        cache.parent.parent == path.parent and not (path / "model.onnx").exists()
    )  # the policy is untouched
    stamp = cache.stat().st_mtime_ns
    LAPAPolicy.from_pretrained(path, backend="onnx")
    assert cache.stat().st_mtime_ns == stamp  # loaded from the cache, not exported again

    other = make_untrained_policy(cfg, inputs, path.parent / "retrained", seed=1)
    cache_other = onnx_cache_path(other)
    cache_other.parent.mkdir()
    cache_other.write_bytes(cache.read_bytes())  # a stale export of other weights in the cache
    image, text = _observations(1)[0][0], INSTRUCTIONS[0]
    reloaded = LAPAPolicy.from_pretrained(other, backend="onnx")
    assert cache_other.read_bytes() != cache.read_bytes()  # exported again for the new weights
    torch_other = LAPAPolicy.from_pretrained(other)
    images, texts = _observations(6, seed=3)
    np.testing.assert_array_equal(
        reloaded.predict_bins(images, texts), torch_other.predict_bins(images, texts)
    )
    assert reloaded.predict(image, text).shape == (4,)


def test_an_exported_model_onnx_is_used_and_checked(setup, tmp_path):
    import shutil

    from lapa.commands import main
    from lapa.policy import LAPAPolicy
    from lapa.policy.policy import onnx_cache_path

    cfg, inputs, path = setup
    copy = tmp_path / "policy"
    shutil.copytree(path, copy)
    with pytest.raises(SystemExit) as exc:
        main(["export", "--policy", str(copy), "--out", str(copy / "model.onnx")])
    assert exc.value.code == 0
    policy = LAPAPolicy.from_pretrained(copy, backend="onnx")
    assert policy.onnx_path == copy / "model.onnx" and not onnx_cache_path(copy).exists()
    # the same graph beside other weights is refused, naming the file
    other = make_untrained_policy(cfg, inputs, tmp_path / "other", seed=2)
    shutil.copy(copy / "model.onnx", other / "model.onnx")
    with pytest.raises(ValueError, match=r"model\.onnx was exported from other weights"):
        LAPAPolicy.from_pretrained(other, backend="onnx")
    with pytest.raises(ValueError, match=r"model\.onnx was exported from other weights"):
        LAPAPolicy.from_pretrained(other, backend="onnx", onnx_path=copy / "model.onnx")
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        LAPAPolicy.from_pretrained(path, backend="onnx", onnx_path=tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(ValueError, match="junk.onnx: not a loadable ONNX model"):
        LAPAPolicy.from_pretrained(path, backend="onnx", onnx_path=tmp_path / "junk.onnx")


def test_bad_backend_arguments_are_clear_errors(setup):
    from lapa.policy import LAPAPolicy

    path = setup[2]
    with pytest.raises(ValueError, match="unknown policy backend 'tensorrt': choose one of 'torch', 'onnx'"):
        LAPAPolicy.from_pretrained(path, backend="tensorrt")
    with pytest.raises(ValueError, match="float32"):
        LAPAPolicy.from_pretrained(path, backend="onnx", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="onnx_path is for backend='onnx'"):
        LAPAPolicy.from_pretrained(path, onnx_path=path / "model.onnx")


def test_lapa_serve_backend_onnx(setup, both):
    from lapa.policy.server import free_port

    path = setup[2]
    torch_policy = both[0]
    port = free_port()
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "lapa", "serve", "--policy", str(path), "--port", str(port)]
    cmd += ["--device", "cpu", "--backend", "onnx", "-c", "tiny"]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "lapa serve did not start"
            try:
                health = httpx.get(url + "/health", timeout=2.0)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert health.json()["backend"] == "onnx"
        image = np.random.default_rng(5).integers(0, 256, (90, 120, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        r = httpx.post(
            url + "/act",
            files={"image": ("f.png", buf.getvalue(), "image/png")},
            data={"instruction": "open the drawer"},
            timeout=30.0,
        )
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(
            np.asarray(r.json()["action"], np.float32), torch_policy.predict(image, "open the drawer")
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    bad = subprocess.run(
        [*cmd[:-4], "--backend", "tensorrt"], cwd=root, env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "invalid choice: 'tensorrt'" in bad.stderr
    bad = subprocess.run([*cmd, "serve.threads=0"], cwd=root, env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "serve.threads must be >= 1, got 0" in bad.stderr


def test_export_to_a_directory_is_refused_before_any_work(tmp_path, capsys):
    from lapa.commands import main

    with pytest.raises(SystemExit) as exc:  # the policy is not even looked at
        main(["export", "--policy", str(tmp_path / "no-policy"), "--out", str(tmp_path)])
    assert exc.value.code == 1
    assert f"--out {tmp_path}: is a directory" in capsys.readouterr().err
