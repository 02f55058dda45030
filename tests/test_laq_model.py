"""Unit tests of the LAQ modules (spec 5.1) and its metric functions."""

import numpy as np
import pytest
import torch

from lapa.laq import metrics as M
from lapa.laq.blocks import ResBlock
from lapa.laq.decoder import LAQDecoder
from lapa.laq.encoder import LAQEncoder
from lapa.laq.model import LAQModel
from lapa.laq.quantizer import TokenPooling, VectorQuantizer

torch.set_num_threads(2)


def tiny_arch(**quantizer):
    q = dict(num_tokens=4, vocab_size=8, embedding_dim=32, beta=0.25, pooling="attention", lookup_dim=8)
    q.update(quantizer)
    return {
        "image_size": 32,
        "encoder": {"base_channels": 8, "channel_multipliers": [1, 2], "num_res_blocks": 1, "latent_dim": 32},
        "quantizer": q,
        "decoder": {
            "base_channels": 8,
            "channel_multipliers": [1, 2],
            "num_res_blocks": 1,
            "conditioning": "film",
        },
    }


def test_encoder_shapes_spec_sizes():
    encoder = LAQEncoder(in_channels=6, base_channels=8, channel_multipliers=[1, 2, 4, 8], latent_dim=256)
    out = encoder(torch.randn(2, 6, 224, 224))
    assert out.shape == (2, 256, 14, 14)


def test_resblock_groupnorm_divides_small_channel_counts():
    for channels in (6, 12, 40):
        assert ResBlock(channels)(torch.randn(1, channels, 4, 4)).shape == (1, channels, 4, 4)


def test_quantizer_discreteness():
    quantizer = VectorQuantizer(num_tokens=4, vocab_size=8, embedding_dim=256)
    quantized, indices, losses = quantizer(torch.randn(2, 4, 256))
    assert quantized.shape == (2, 4, 256)
    assert indices.min() >= 0 and indices.max() < 8
    assert indices.dtype == torch.long
    assert set(losses) == {"codebook", "commitment", "entropy"}


@pytest.mark.parametrize("lookup_dim", [None, 16])
def test_quantizer_straight_through_gradient(lookup_dim):
    quantizer = VectorQuantizer(num_tokens=4, vocab_size=8, embedding_dim=64, lookup_dim=lookup_dim)
    z = torch.randn(3, 4, 64, requires_grad=True)
    quantized, _, _ = quantizer(z)
    quantized.pow(2).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_quantizer_output_is_the_code_in_eval():
    quantizer = VectorQuantizer(num_tokens=2, vocab_size=4, embedding_dim=16, l2_normalize=True).eval()
    z = torch.randn(5, 2, 16)
    quantized, idx, _ = quantizer(z)
    codes = quantizer.codes()
    expected = torch.stack([codes[t, idx[:, t]] for t in range(2)], dim=1)
    torch.testing.assert_close(quantized, expected)


def test_dead_codes_are_restarted_from_encoder_outputs():
    quantizer = VectorQuantizer(
        num_tokens=1, vocab_size=4, embedding_dim=8, kmeans_init=False, dead_code_window=3, l2_normalize=True
    ).train()
    z = torch.randn(64, 1, 8)
    for _ in range(3):
        quantizer(z)
    # after restarts every code lies on some encoder output's direction: all are used on this batch
    for _ in range(10):
        _, idx, _ = quantizer(z)
    assert int(quantizer.unused_steps.max()) < 3


def test_ema_quantizer_updates_codes_without_gradient():
    quantizer = VectorQuantizer(num_tokens=2, vocab_size=4, embedding_dim=8, ema=True).train()
    before = quantizer.codebook.detach().clone()
    _, _, losses = quantizer(torch.randn(32, 2, 8))
    assert not quantizer.codebook.requires_grad
    assert float(losses["codebook"]) == 0.0
    assert not torch.equal(before, quantizer.codebook.detach())


@pytest.mark.parametrize("mode", ["attention", "average", "linear"])
def test_token_pooling_modes(mode):
    pool = TokenPooling(mode, latent_dim=16, grid_size=4, num_tokens=4, embedding_dim=32)
    assert pool(torch.randn(2, 16, 4, 4)).shape == (2, 4, 32)


@pytest.mark.parametrize("conditioning", ["film", "add", "cross_attention"])
def test_decoder_shape_and_tanh_range(conditioning):
    decoder = LAQDecoder(
        num_tokens=4, embedding_dim=32, base_channels=8, channel_multipliers=[1, 2], conditioning=conditioning
    )
    frame_t = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        for p in decoder.head.parameters():  # leave the copy initialisation to see the range
            p.normal_(0, 1.0)
    out = decoder(torch.randn(2, 4, 32) * 10, frame_t)
    assert out.shape == (2, 3, 32, 32)
    assert out.min() >= -1 and out.max() <= 1


def test_decoder_starts_as_a_copy_of_frame_t():
    decoder = LAQDecoder(num_tokens=4, embedding_dim=32, base_channels=8, channel_multipliers=[1, 2])
    frame_t = torch.rand(2, 3, 32, 32) * 1.8 - 0.9
    torch.testing.assert_close(decoder(torch.randn(2, 4, 32), frame_t), frame_t, atol=1e-5, rtol=0)


def test_model_forward_and_predict():
    model = LAQModel(tiny_arch())
    ft = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    out = model(ft.float() / 127.5 - 1, ft.float() / 127.5 - 1)
    assert out.reconstruction.shape == (3, 3, 32, 32)
    idx = model.eval().predict_indices(ft, ft)
    assert idx.shape == (3, 4) and idx.dtype == torch.int64
    with pytest.raises(ValueError, match="image_size"):
        LAQModel({**tiny_arch(), "image_size": 30})


def test_metrics():
    a = np.arange(1000) % 8
    assert M.normalized_mutual_information(a, (a + 3) % 8) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    assert M.normalized_mutual_information(rng.integers(0, 8, 5000), rng.integers(0, 8, 5000)) < 0.01
    codes = np.stack([a, np.zeros_like(a)], 1)
    hist = M.code_histograms(codes, 8)
    assert M.perplexity(hist)[0] == pytest.approx(8.0) and M.perplexity(hist)[1] == pytest.approx(1.0)
    assert M.utilisation(hist).tolist() == [1.0, 0.125]
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert float(M.ssim(x, x)) == pytest.approx(1.0, abs=1e-4)
    assert float(M.psnr(x, x.clamp(-0.9, 0.9))) > float(M.psnr(x, -x))
    probe = M.code_action_ami(codes, np.stack([a, -a], 1).astype(float), vocab_size=8, bins=8)
    assert probe["ami"] == pytest.approx(1.0)


def test_usage_entropy_loss_penalises_collapse_and_spreads_codes():
    """The usage term is lower when a batch spreads over the codes than when all pick one, and its
    gradient alone moves collapsed encoder outputs onto several codes."""
    torch.manual_seed(0)
    q = VectorQuantizer(
        num_tokens=1,
        vocab_size=4,
        embedding_dim=8,
        kmeans_init=False,
        entropy_weight=1.0,
        entropy_temperature=1.0,
    )
    codes = q.codes().detach()[0]  # [4, 8]
    spread = codes.repeat(8, 1).unsqueeze(1)  # each code used equally
    collapsed = codes[:1].repeat(32, 1).unsqueeze(1)  # every pair on code 0
    assert q.usage_entropy_loss(q._distances(spread)[1]) < q.usage_entropy_loss(q._distances(collapsed)[1])

    z = (codes[:1] + 0.05 * torch.randn(32, 8)).unsqueeze(1).requires_grad_(True)
    opt = torch.optim.SGD([z], lr=0.5)
    assert q.indices(z).unique().numel() == 1
    for _ in range(200):
        opt.zero_grad()
        q.usage_entropy_loss(q._distances(z)[1]).backward()
        opt.step()
    assert q.indices(z).unique().numel() >= 3
