"""The VLA model, its preprocessing, backbones directory and consolidated checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lapa.config import load_config
from lapa.vla.heads import LatentActionHead
from lapa.vla.model import VLAModel, count_parameters
from lapa.vla.processor import VLAProcessor
from lapa.vla.tokenizer import train_llama_tokenizer
from lapa.vla.vision import FusedVisionEncoder

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TEXTS = ["pick up block", "open drawer", "push the puck all the way to the goal on the far side of the table"]


def tiny_config(tmp_path: Path, overrides: list[str] | None = None):
    exp = tmp_path / "exp" / "vla.yaml"
    exp.parent.mkdir(parents=True, exist_ok=True)
    exp.write_text(
        "defaults:\n  - data/metaworld_small\n  - model/vla_tiny\n  - training/vla_cpu\nname: vla\n"
    )
    return load_config(exp, overrides, configs_root=CONFIGS)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = tiny_config(tmp_path_factory.mktemp("cfg"))
    tokenizer = train_llama_tokenizer(TEXTS * 4, 320)
    model = VLAModel(
        cfg.foundation, num_queries=4, head=LatentActionHead(128, 4, 8), vocab_size=len(tokenizer)
    )
    processor = VLAProcessor(tokenizer, cfg.foundation.vision.image_size, cfg.foundation.max_text_tokens)
    return cfg, tokenizer, model.eval(), processor


def test_vision_encoder_frozen(setup):
    cfg = setup[0]
    vision = FusedVisionEncoder(cfg.foundation.vision)
    assert all(not p.requires_grad for p in vision.parameters())
    vision.train()
    assert not vision.training  # frozen towers stay in eval mode
    feats = vision(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    assert feats.shape == (2, 64, 64 + 48)  # 8x8 patches, SigLIP 64 + DINOv2 48 channels, no prefix tokens


def test_vision_normalises_with_each_towers_statistics(setup):
    vision = FusedVisionEncoder(setup[0].foundation.vision)
    white = torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)
    siglip = white.float() * vision.siglip.scale + vision.siglip.shift
    dino = white.float() * vision.dinov2.scale + vision.dinov2.shift
    assert torch.allclose(siglip.flatten(), torch.ones(3))  # (1 - 0.5) / 0.5
    assert torch.allclose(
        dino.flatten(), torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    )


def test_vla_forward(setup):
    _, _, model, processor = setup
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    inputs = processor(images, ["pick up block", "open drawer"])
    logits = model(inputs["images"], inputs["input_ids"], inputs["attention_mask"])
    assert logits.shape == (2, 4, 8)  # batch, tokens, vocab
    hidden = model.action_hidden(inputs["images"], inputs["input_ids"], inputs["attention_mask"])
    assert hidden.shape == (2, 4, 128)


def test_batched_outputs_match_each_sample_alone(setup):
    _, _, model, processor = setup
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    texts = ["open drawer", TEXTS[2]]
    batch = processor(images, texts)
    lengths = batch["attention_mask"].sum(1)
    assert lengths[1] - lengths[0] >= 10  # very different lengths: sample 0 is mostly padding
    with torch.no_grad():
        together = model(batch["images"], batch["input_ids"], batch["attention_mask"])
        for i in range(2):
            alone = processor(images[i : i + 1], [texts[i]])
            single = model(alone["images"], alone["input_ids"], alone["attention_mask"])
            torch.testing.assert_close(together[i : i + 1], single, atol=1e-5, rtol=1e-5)


def test_left_padding_is_refused(setup):
    _, _, model, processor = setup
    batch = processor(torch.zeros(2, 3, 64, 64, dtype=torch.uint8), ["open drawer", TEXTS[2]])
    with pytest.raises(ValueError, match="right-padded"):
        model(batch["images"], batch["input_ids"], batch["attention_mask"].flip(1))


def test_processor_accepts_arrays_pil_and_tensors(setup):
    from PIL import Image

    processor = setup[3]
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    from_numpy = processor([hwc], ["open drawer"])
    from_pil = processor([Image.fromarray(hwc)], ["open drawer"])
    from_tensor = processor(torch.from_numpy(hwc).permute(2, 0, 1)[None].contiguous(), ["open drawer"])
    assert from_numpy["images"].shape == (1, 3, 64, 64) and from_numpy["images"].dtype == torch.uint8
    assert torch.equal(from_numpy["images"], from_pil["images"])
    assert torch.equal(from_numpy["images"], from_tensor["images"])
    assert from_numpy["input_ids"][0, 0] == processor.bos_token_id
    long = processor(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), ["word " * 100])
    assert long["input_ids"].shape[1] == 1 + processor.max_text_tokens


def test_tokenizer_round_trips_any_text(tmp_path):
    from transformers import AutoTokenizer

    tok = train_llama_tokenizer(TEXTS, 300)
    assert len(tok) <= 300
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    for text in ["pick up block", "Zürich ✓ unseen words"]:
        ids = again(text, add_special_tokens=False)["input_ids"]
        assert ids and again.decode(ids) == text


def test_full_7b_configuration_is_the_real_architecture(tmp_path):
    cfg = load_config("vla_7b", configs_root=CONFIGS)
    with torch.device("meta"):
        model = VLAModel(cfg.foundation, num_queries=4, head=LatentActionHead(4096, 4, 8))
    llm = count_parameters(model.llm)
    siglip = count_parameters(model.vision.siglip)
    dino = count_parameters(model.vision.dinov2)
    projector = count_parameters(model.projector)
    assert llm == 6_607_343_616  # Llama-2-7B's decoder; with its 32000x4096 output layer (unused here) 6.74B:
    assert abs(llm + 32000 * 4096 - 6.738e9) < 0.001e9
    assert abs(siglip - 0.412e9) < 0.005e9  # SO400M trunk (0.428B with the unused attention-pool head)
    assert abs(dino - 0.303e9) < 0.005e9  # ViT-L/14 with 4 registers
    assert projector == 2 * 2176 + 2176 * 4096 + 4096 + 4096 * 4096 + 4096 + 2 * 4096
    assert model.num_image_tokens == 256 and model.vision.out_dim == 2176
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - siglip - dino


def test_backbones_and_checkpoint_round_trip(tmp_path):
    from lapa.vla.backbones import load_backbones, make_backbones
    from lapa.vla.checkpoint import load_foundation, save_foundation

    cfg = tiny_config(tmp_path)
    make_backbones(cfg.foundation, TEXTS, tmp_path / "bb")
    bb = load_backbones(tmp_path / "bb")
    assert bb.info["tokenizer"]["kind"] == "trained" and bb.llm.config.vocab_size == len(bb.tokenizer)
    torch.manual_seed(1)
    model = VLAModel(cfg.foundation, num_queries=4, head=LatentActionHead(128, 4, 8), llm=bb.llm).eval()
    model.vision.load_state_dict(bb.vision_state)
    save_foundation(model, bb.tokenizer, cfg.foundation, tmp_path / "found", {"step": 7})
    loaded, tokenizer, fcfg, head = loaded_all = load_foundation(tmp_path / "found")
    assert len(loaded_all) == 4 and head["num_tokens"] == 4 and head["vocab_size"] == 8 and head["step"] == 7
    assert fcfg.vision.image_size == 64
    processor = VLAProcessor(tokenizer, 64, fcfg.max_text_tokens)
    inputs = processor(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8), TEXTS[:2])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**_args(inputs)), model(**_args(inputs)), atol=0, rtol=0)


def _args(inputs: dict) -> dict:
    return {
        "images_uint8": inputs["images"],
        "input_ids": inputs["input_ids"],
        "attention_mask": inputs["attention_mask"],
    }


def test_no_weight_decay_on_norms_biases_embeddings(setup):
    from lapa.utils.optim import param_groups
    from lapa.utils.schedule import warmup_cosine

    model = setup[2]
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim == 2 and "norm" not in names[id(p)] for p in decay["params"])
    assert any("embed_tokens" in names[id(p)] for p in no_decay["params"])
    assert any("action_queries" in names[id(p)] for p in no_decay["params"])
    assert not any("vision" in names[id(p)] for p in decay["params"] + no_decay["params"])  # frozen
    kw = dict(warmup_steps=10, max_steps=110, min_ratio=1e-5 / 1e-3)
    assert warmup_cosine(0, **kw) == pytest.approx(0.1) and warmup_cosine(9, **kw) == pytest.approx(1.0)
    assert warmup_cosine(110, **kw) == pytest.approx(0.01) and warmup_cosine(60, **kw) == pytest.approx(0.505)
