"""Decoding the 256-bin head (argmax, expectation), targets that respect bin order, and the policy
directory recording the decoding that predict(), evaluation and serving use."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from lapa.data.action_codec import ActionStats
from lapa.vla.heads import (
    DECODINGS,
    bin_values,
    binned_cross_entropy,
    binned_loss,
    check_decoding,
    decode_actions,
    expected_values,
    smoothed_targets,
)

BIG = 50.0  # a logit this far above the rest makes softmax one-hot to float64 precision


def _stats(num_bins: int = 256) -> ActionStats:
    # a continuous dimension on [-1, 1], a binary gripper {-1, 1}, a constant 0.5
    return ActionStats(
        np.array([-1.0, -1.0, 0.5]), np.array([1.0, 1.0, 0.5]), ["continuous", "binary", "constant"], num_bins
    )


def _peaks(stats: ActionStats, bins_per_dim: list[list[int]]) -> torch.Tensor:
    logits = torch.zeros(1, stats.action_dim, stats.num_bins, dtype=torch.float64)
    for d, bins in enumerate(bins_per_dim):
        logits[0, d, bins] = BIG
    return logits


def test_bin_values_are_the_codec_centres():
    stats = _stats()
    values = bin_values(stats)
    assert values.shape == (3, 256)
    assert values[0, 0] == pytest.approx(-1 + 1 / 256) and values[0, 255] == pytest.approx(1 - 1 / 256)
    assert values[0, 128] == pytest.approx(1 / 256)
    assert set(values[1, :128]) == {-1.0} and set(values[1, 128:]) == {1.0}
    assert set(values[2]) == {0.5}


@pytest.mark.parametrize("b", [0, 17, 128, 255])
def test_expectation_of_a_one_hot_is_that_bins_centre(b):
    stats = _stats()
    logits = _peaks(stats, [[b], [b], [b]])
    got = decode_actions(logits, stats, "expectation")[0]
    want = stats.dequantize(np.array([[b, b, b]]))[0]
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(decode_actions(logits, stats, "argmax")[0], want, atol=0)


def test_expectation_of_two_equal_peaks_is_their_midpoint():
    stats = _stats()
    logits = _peaks(stats, [[10, 200], [0, 255], [0, 255]])
    got = decode_actions(logits, stats, "expectation")[0]
    centres = stats.dequantize(np.array([[10, 0, 0], [200, 255, 255]]))
    np.testing.assert_allclose(got, centres.mean(axis=0), atol=1e-6)
    assert got[0] == pytest.approx(-1 + (105 + 0.5) / 128, abs=1e-6)
    assert got[1] == pytest.approx(0.0, abs=1e-6)  # the gripper between its two values
    assert got[2] == pytest.approx(0.5)


def test_argmax_decoding_is_unchanged():
    stats = _stats()
    logits = torch.randn(5, 3, 256, generator=torch.Generator().manual_seed(0))
    want = stats.dequantize(logits.argmax(-1).numpy())
    np.testing.assert_array_equal(decode_actions(logits, stats, "argmax"), want)


def test_expectation_does_not_snap_to_a_mode():
    # most mass on the top bin, the rest spread below: arg-max says +1, the mean lies well inside
    stats = _stats()
    probs = torch.full((256,), 0.6 / 255, dtype=torch.float64)
    probs[255] = 0.4
    logits = torch.zeros(1, 3, 256, dtype=torch.float64)
    logits[0, 0] = probs.log()
    got = decode_actions(logits, stats, "expectation")[0, 0]
    want = float((probs.numpy() * bin_values(stats)[0]).sum())
    assert got == pytest.approx(want, abs=1e-6)
    assert decode_actions(logits, stats, "argmax")[0, 0] == pytest.approx(1 - 1 / 256)
    assert got < 0.5


def test_bad_decoding_and_shapes_are_refused():
    stats = _stats()
    with pytest.raises(ValueError, match="finetune.decoding must be one of"):
        check_decoding("median", "finetune.decoding")
    with pytest.raises(ValueError, match="action_dim=3, num_bins=256"):
        decode_actions(torch.zeros(1, 3, 8), stats, "expectation")
    assert set(DECODINGS) == {"argmax", "expectation"}


@pytest.mark.parametrize("sigma", [0.0, 0.5, 2.0, 5.0])
def test_smoothed_targets_sum_to_one_and_peak_at_the_true_bin(sigma):
    bins = torch.tensor([[0, 7, 128, 255]])
    soft = smoothed_targets(bins, 256, sigma)
    assert soft.shape == (1, 4, 256)
    torch.testing.assert_close(soft.sum(-1), torch.ones(1, 4))
    assert torch.equal(soft.argmax(-1), bins)
    if sigma == 0:
        assert torch.equal(soft, torch.nn.functional.one_hot(bins, 256).float())
    else:  # symmetric away from the edges, falling with distance
        row = soft[0, 2]
        assert row[127] == pytest.approx(float(row[129])) and row[128] > row[129] > row[130]
        ratio = float(row[129] / row[128])
        assert ratio == pytest.approx(np.exp(-0.5 / sigma**2), rel=1e-5)
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        smoothed_targets(bins, 256, -1.0)


def test_binned_loss_options():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, 16, generator=gen, requires_grad=True)
    bins = torch.randint(0, 16, (4, 3), generator=gen)
    plain = binned_loss(logits, bins)
    torch.testing.assert_close(plain, binned_cross_entropy(logits, bins))
    # soft targets: cross-entropy against the Gaussian, by hand
    soft = smoothed_targets(bins, 16, 1.5)
    by_hand = -(soft * torch.log_softmax(logits, -1)).sum(-1).mean()
    torch.testing.assert_close(binned_loss(logits, bins, label_sigma=1.5), by_hand)
    # the L1 term: |expectation - target| on the same values
    values = torch.linspace(-1, 1, 16).expand(3, 16).contiguous()
    target = torch.zeros(4, 3)
    l1 = (expected_values(logits, values) - target).abs().mean()
    got = binned_loss(logits, bins, l1_weight=0.5, values=values, target=target)
    torch.testing.assert_close(got, plain + 0.5 * l1)
    got.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="needs the bin values"):
        binned_loss(logits, bins, l1_weight=1.0)


# -- the policy directory -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    from tests.fixtures.policy import make_tiny_inputs, make_untrained_policy, tiny_config

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("decoding")
    cfg = tiny_config()
    inputs = make_tiny_inputs(root, cfg)
    return root, cfg, inputs, make_untrained_policy(cfg, inputs, root / "policy")


def _with_decoding(src, dst, decoding):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    if decoding is None:
        config.pop("decoding", None)
    else:
        config["decoding"] = decoding
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("decoding", ["argmax", "expectation"])
def test_predict_decodes_the_logits_with_the_recorded_decoding(untrained, tmp_path, decoding):
    from lapa.policy import LAPAPolicy

    _, _, _, path = untrained
    policy = LAPAPolicy.from_pretrained(_with_decoding(path, tmp_path / "p", decoding))
    assert policy.decoding == decoding
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(2)]
    texts = ["reach the red target", "open the drawer"]
    logits = policy.logits_from_tensors(policy.prepare_images(images), texts).double()
    probs = torch.softmax(logits, -1).numpy()
    if decoding == "argmax":
        manual = policy.stats.dequantize(probs.argmax(-1))
    else:
        manual = (probs * bin_values(policy.stats)[None]).sum(-1)
    np.testing.assert_allclose(policy.predict_batch(images, texts), manual, atol=1e-5)
    np.testing.assert_allclose(policy.predict(images[1], texts[1]), manual[1], atol=1e-5)
    assert policy.predict_batch([], []).shape == (0, policy.action_dim)


def test_a_directory_without_decoding_keeps_argmax_and_bad_ones_are_refused(untrained, tmp_path):
    from lapa.policy import LAPAPolicy

    _, _, _, path = untrained
    assert LAPAPolicy.from_pretrained(_with_decoding(path, tmp_path / "old", None)).decoding == "argmax"
    with pytest.raises(ValueError, match=r"config.json: decoding must be one of"):
        LAPAPolicy.from_pretrained(_with_decoding(path, tmp_path / "bad", "mode"))


def test_offline_evaluation_reports_every_decoding_on_the_same_logits(untrained, tmp_path):
    from lapa.evaluation.metrics import ActionMetrics
    from lapa.evaluation.offline import collect_predictions, evaluate_offline
    from lapa.policy import LAPAPolicy

    _, cfg, inputs, path = untrained
    policy = LAPAPolicy.from_pretrained(_with_decoding(path, tmp_path / "p", "expectation"))
    metrics = evaluate_offline(policy, inputs["shards"], tmp_path / "eval", cfg.data.loader, plot_episodes=1)
    assert metrics["decoding"] == "expectation"
    assert set(metrics["mse_by_decoding"]) == {"argmax", "expectation"}
    assert metrics["mse"] == metrics["mse_by_decoding"]["expectation"]
    records = collect_predictions(policy, inputs["shards"], cfg.data.loader)
    for d in DECODINGS:  # each figure is the MSE of that decoding, by hand
        acc = ActionMetrics(policy.stats)
        acc.update(records["pred_bins"], records["true"], pred_actions=records["pred"][d])
        assert acc.compute()["mse"] == pytest.approx(metrics["mse_by_decoding"][d])
    pred = policy.stats.normalize(records["pred"]["argmax"])
    true = policy.stats.normalize(records["true"])
    assert metrics["mse_by_decoding"]["argmax"] == pytest.approx(float(((pred - true) ** 2).mean()), rel=1e-5)
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["mse_by_decoding"] == metrics["mse_by_decoding"]
    override = evaluate_offline(
        policy, inputs["shards"], tmp_path / "eval2", cfg.data.loader, plot_episodes=1, decoding="argmax"
    )
    assert override["mse"] == pytest.approx(metrics["mse_by_decoding"]["argmax"])


def test_the_onnx_backend_decodes_with_the_recorded_decoding(untrained, tmp_path):
    from lapa.policy import LAPAPolicy

    _, _, _, path = untrained
    directory = _with_decoding(path, tmp_path / "p", "expectation")
    onnx = LAPAPolicy.from_pretrained(directory, backend="onnx")
    torch_policy = LAPAPolicy.from_pretrained(directory)
    assert onnx.decoding == torch_policy.decoding == "expectation"
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    text = "push the block to the goal"
    logits = onnx.logits_from_tensors(onnx.prepare_images([image]), [text]).double()
    manual = (torch.softmax(logits, -1).numpy() * bin_values(onnx.stats)[None]).sum(-1)[0]
    np.testing.assert_allclose(onnx.predict(image, text), manual, atol=1e-5)
    np.testing.assert_allclose(onnx.predict(image, text), torch_policy.predict(image, text), atol=1e-3)
