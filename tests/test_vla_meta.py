"""Meta-device construction: a model built on ``meta`` and filled from its weights equals the eager one.

Single process (``load_foundation``) and FSDP2 over two gloo processes (each rank materialises
and reads only its own shards).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lapa.config import load_config
from lapa.vla.backbones import make_backbones
from lapa.vla.meta import TensorSource, empty_llama, materialize

REPO = Path(__file__).resolve().parents[1]


def _tiny_vla(tmp_path: Path):
    from lapa.vla.backbones import load_backbones
    from lapa.vla.heads import LatentActionHead
    from lapa.vla.model import VLAModel

    cfg = load_config("tiny", [])
    make_backbones(cfg.foundation, ["reach the red target", "open the drawer"], tmp_path / "bb")
    bb = load_backbones(tmp_path / "bb")
    torch.manual_seed(0)
    head = LatentActionHead(bb.llm.config.hidden_size, 4, 8)
    model = VLAModel(cfg.foundation, num_queries=4, head=head, llm=bb.llm)
    model.vision.load_state_dict(bb.vision_state)
    return cfg, model.eval(), bb


def _inputs(model, tokenizer, size: int):
    from lapa.vla.processor import VLAProcessor

    torch.manual_seed(1)
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    proc = VLAProcessor(tokenizer, size, 16)
    return proc(images, ["reach the red target", "open the drawer"])


def test_load_foundation_builds_on_meta_and_equals_the_saved_model(tmp_path, monkeypatch):
    from transformers import LlamaModel

    from lapa.vla.checkpoint import load_foundation, save_foundation

    cfg, model, bb = _tiny_vla(tmp_path)
    save_foundation(model, bb.tokenizer, cfg.foundation, tmp_path / "foundation")

    built_on = []
    original_init = LlamaModel.__init__

    def spy(self, *args, **kwargs):
        built_on.append(torch.empty(0).device.type)  # the default device while the Llama is built
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(LlamaModel, "__init__", spy)
    loaded, tokenizer, _, _ = load_foundation(tmp_path / "foundation")
    assert built_on == ["meta"], "the Llama must be built on the meta device, not randomly initialised"
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    for name, buf in loaded.named_buffers():
        assert buf.device.type == "cpu" and torch.isfinite(buf).all(), name
    inputs = _inputs(model, tokenizer, cfg.foundation.vision.image_size)
    with torch.no_grad():
        expected = model(inputs["images"], inputs["input_ids"], inputs["attention_mask"])
        got = loaded(inputs["images"], inputs["input_ids"], inputs["attention_mask"])
    assert torch.equal(expected, got)


def test_materialize_names_missing_and_misshapen_weights(tmp_path):
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=50
    )
    llm = empty_llama(config)
    with pytest.raises(ValueError, match="weights missing for"):
        materialize(llm, TensorSource().add_tensors({"norm.weight": torch.ones(32)}))
    full = {k: torch.zeros(v.shape) for k, v in llm.state_dict().items()}
    full["norm.weight"] = torch.ones(31)
    with pytest.raises(ValueError, match=r"norm.weight: weights have shape \(31,\)"):
        materialize(empty_llama(config), TensorSource().add_tensors(full))


def test_a_truncated_weights_file_is_an_error_naming_it(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.arange(12, dtype=torch.float32).reshape(4, 3)}, str(path))
    source = TensorSource().add_safetensors(path)
    assert torch.equal(source.read("a", (slice(1, 3), slice(0, 3))), torch.arange(3, 9.0).reshape(2, 3))
    assert torch.equal(
        source.read("a", (slice(0, 4), slice(1, 2))), torch.tensor([[1.0], [4.0], [7.0], [10.0]])
    )
    data = path.read_bytes()
    path.write_bytes(data[:-8])
    with pytest.raises(ValueError, match="w.safetensors: file ends inside a tensor"):
        TensorSource().add_safetensors(path).read("a", (slice(0, 4), slice(0, 3)))
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match="w.safetensors: not a safetensors file"):
        TensorSource().add_safetensors(path)


WORKER = r"""
import json, os, sys, torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[2])
from lapa.config import load_config
from lapa.vla.backbones import load_backbones
from lapa.vla.heads import LatentActionHead
from lapa.vla.meta import TensorSource, empty_llama, materialize
from lapa.vla.model import VLAModel
from lapa.vla.parallelize import fsdp2_parallelize, local_parameter_count
from lapa.vla.processor import VLAProcessor
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
out = sys.argv[1]
cfg = load_config("tiny", [])
bb = load_backbones(os.path.join(out, "bb"), meta_llm=True)
torch.manual_seed(0)
head = LatentActionHead(bb.llm.config.hidden_size, 4, 8)
model = VLAModel(cfg.foundation, num_queries=4, head=head, llm=bb.llm)
small = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("llm.")}
small.update({"vision." + k: v for k, v in bb.vision_state.items()})
mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("data_parallel",))
fsdp2_parallelize(model, mesh, bf16=False, activation_checkpointing=False)
source = TensorSource().add_tensors(small).add_hf_directory(os.path.join(out, "bb", "llm"), prefix="llm.")
report = materialize(model, source, "cpu")
model.eval()
torch.manual_seed(1)
size = cfg.foundation.vision.image_size
images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
inputs = VLAProcessor(bb.tokenizer, size, 16)(images, ["reach the red target", "open the drawer"])
with torch.no_grad():
    logits = model(inputs["images"], inputs["input_ids"], inputs["attention_mask"])
full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
total = sum(p.numel() for p in model.parameters())
record = {"rank": rank, "local": local_parameter_count(model), "total": total}
record["bytes_read"] = report["bytes_read"]
with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
    json.dump(record, fh)
if rank == 0:
    torch.save({"logits": logits, "state": full}, os.path.join(out, "sharded.pt"))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_fsdp2_meta_init_equals_eager_and_each_rank_reads_its_shard(tmp_path):
    from lapa.vla.backbones import load_backbones

    cfg, model, bb = _tiny_vla(tmp_path)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, str(script), str(tmp_path), str(REPO)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    sharded = torch.load(tmp_path / "sharded.pt", weights_only=True)
    eager_state = model.state_dict()
    assert set(sharded["state"]) == set(eager_state)
    for name, value in eager_state.items():
        assert torch.equal(sharded["state"][name], value), name
    inputs = _inputs(model, bb.tokenizer, cfg.foundation.vision.image_size)
    with torch.no_grad():
        expected = model(inputs["images"], inputs["input_ids"], inputs["attention_mask"])
    torch.testing.assert_close(sharded["logits"], expected, rtol=1e-5, atol=1e-5)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    full_bytes = sum(v.numel() * v.element_size() for v in eager_state.values())
    for record in ranks:
        assert record["local"] <= 0.55 * record["total"], record
        assert record["bytes_read"] <= 0.6 * full_bytes, record
    assert load_backbones(tmp_path / "bb", meta_llm=True).llm.layers[0].mlp.up_proj.weight.is_meta
