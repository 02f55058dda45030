"""A world with known discrete actions: the LAQ must recover the sprite's move from pixels.

A collapsed quantizer (one code) gives NMI 0, a model that only copies frame t cannot beat the
copy baseline: this test fails for both.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lapa.laq import metrics as M
from lapa.laq.model import LAQModel, to_model_range
from lapa.utils.schedule import warmup_cosine
from tests.fixtures.laq import sprite_pairs

K = 8
ARCH = {
    "image_size": 32,
    "encoder": {"base_channels": 16, "channel_multipliers": [1, 2], "num_res_blocks": 1, "latent_dim": 32},
    "quantizer": {
        "num_tokens": 1,
        "vocab_size": K,
        "embedding_dim": 32,
        "beta": 0.25,
        "commitment_warmup_steps": 400,
        "pooling": "attention",
        "dead_code_window": 20,
        "lookup_dim": 8,
    },
    "decoder": {
        "base_channels": 16,
        "channel_multipliers": [1, 2],
        "num_res_blocks": 1,
        "conditioning": "film",
    },
}


@pytest.mark.slow
def test_laq_recovers_sprite_moves():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train_t, train_t1, _ = sprite_pairs(4096, num_directions=K, seed=0, step=4)
    val_t, val_t1, val_ids = sprite_pairs(512, num_directions=K, seed=1, step=4)
    model = LAQModel(ARCH)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    steps = 700
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 20, steps, 0.05))
    for _ in range(steps):
        i = rng.integers(0, len(train_t), 64)
        ft, ft1 = to_model_range(torch.from_numpy(train_t[i])), to_model_range(torch.from_numpy(train_t1[i]))
        out = model(ft, ft1)
        loss = F.mse_loss(out.reconstruction, ft1) + out.vq_loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        ft, ft1 = to_model_range(torch.from_numpy(val_t)), to_model_range(torch.from_numpy(val_t1))
        out = model(ft, ft1)
    codes = out.indices.numpy()
    nmi = M.normalized_mutual_information(M.joint_codes(codes, K), val_ids)
    util = M.utilisation(M.code_histograms(codes, K))
    psnr, psnr_copy = float(M.psnr(out.reconstruction, ft1)), float(M.psnr(ft, ft1))
    print(f"NMI {nmi:.3f} util {util} psnr {psnr:.2f} copy {psnr_copy:.2f}")
    assert nmi >= 0.8, f"codes carry too little about the move: NMI {nmi:.3f}"
    assert util.min() == 1.0, f"unused codes: utilisation {util}"
    assert psnr > psnr_copy + 3, (
        f"reconstruction {psnr:.2f} dB does not beat copying frame t ({psnr_copy:.2f} dB)"
    )
