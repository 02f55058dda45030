"""Peak host memory per rank when a large Llama is sharded with FSDP2 over two CPU processes (gloo).

Two ways to get a sharded model whose weights come from a ``save_pretrained`` directory:

- eager (the baseline, what every rank did before): ``LlamaModel.from_pretrained`` on each rank
  (the full model in fp32 on the host), then ``fully_shard``;
- meta: ``lapa.vla.meta.empty_llama`` (shapes only), ``fully_shard``, then
  ``lapa.vla.meta.materialize`` reads each rank's rows of the safetensors file.

Each rank reports its peak RSS (``ru_maxrss``). The fixed overhead (libraries, process group,
FSDP2 machinery) is the peak of the same run on a tiny Llama (2 layers, hidden 64); the figure
that counts is (peak - fixed overhead) / the full model's fp32 size. Goal: meta <= 0.6.

Usage: .venv/bin/python benchmarks/bench_meta_init.py [--hidden 4096 --layers 4 --vocab 32000]
(about 1B parameters by default; needs ~3x the model size in free memory for the eager run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = r"""
import json, os, resource, sys, time
import torch, torch.distributed as dist
import transformers  # noqa: F401  (the fixed overhead includes the libraries)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
def rss_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.set_num_threads(1)
mode, weights, out = sys.argv[1], sys.argv[2], sys.argv[3]
overhead = rss_mb()
t0 = time.perf_counter()
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
if mode == "eager":
    from transformers import LlamaModel
    model = LlamaModel.from_pretrained(weights, local_files_only=True, dtype=torch.float32)
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
else:
    from transformers import LlamaConfig
    from lapa.vla.meta import TensorSource, empty_llama, materialize
    model = empty_llama(LlamaConfig.from_pretrained(weights, local_files_only=True))
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    materialize(model, TensorSource().add_hf_directory(weights), "cpu")
dist.barrier()
seconds = time.perf_counter() - t0
loaded_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
with torch.no_grad():  # one forward, so the sharded model is known to work
    model(input_ids=torch.tensor([[1, 2, 3, 4]]))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
with open(os.path.join(out, f"{mode}-{rank}.json"), "w") as fh:
    record = {"rank": rank, "overhead_mb": overhead, "peak_mb": loaded_peak, "seconds": seconds}
    record.update(local=local, forward_peak_mb=peak)
    json.dump(record, fh)
dist.destroy_process_group()
"""


def _save(config, path: Path) -> int:
    import torch
    from transformers import LlamaModel

    torch.manual_seed(0)
    model = LlamaModel(config)
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def _run(script: Path, mode: str, weights: Path, out: Path, nproc: int) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    subprocess.run(
        [*cmd, str(script), mode, str(weights), str(out)], env=env, check=True, capture_output=True
    )
    return [json.loads((out / f"{mode}-{r}.json").read_text()) for r in range(nproc)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()

    from transformers import LlamaConfig

    big = LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        vocab_size=args.vocab,
    )
    tiny = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=1000
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        params = _save(big, tmp / "big")
        _save(tiny, tmp / "tiny")
        full_mb = params * 4 / 2**20
        print(
            f"model: {params / 1e9:.3f}B parameters, fp32 size {full_mb:.0f} MB (written in "
            f"{time.perf_counter() - t0:.0f} s); {args.nproc} ranks over gloo on CPU"
        )
        script = tmp / "worker.py"
        script.write_text(WORKER)
        rows = {}
        for mode in ("eager", "meta"):
            (tmp / "tiny-out").mkdir(exist_ok=True)
            (tmp / "big-out").mkdir(exist_ok=True)
            fixed = max(r["peak_mb"] for r in _run(script, mode, tmp / "tiny", tmp / "tiny-out", args.nproc))
            rows[mode] = (fixed, _run(script, mode, tmp / "big", tmp / "big-out", args.nproc))
        header = ("mode", "rank", "fixed MB", "peak MB", "model MB", "/ fp32 size", "s")
        print("{:6s} {:>4s} {:>9s} {:>8s} {:>9s} {:>11s} {:>6s}".format(*header))
        worst = {}
        for mode, (fixed, ranks) in rows.items():
            for r in ranks:
                above = r["peak_mb"] - fixed
                worst[mode] = max(worst.get(mode, 0.0), above / full_mb)
                print(
                    f"{mode:6s} {r['rank']:4d} {fixed:9.0f} {r['peak_mb']:8.0f} {above:9.0f} "
                    f"{above / full_mb:11.2f} {r['seconds']:6.1f}"
                )
        print(
            f"worst rank, (peak - fixed overhead) / full fp32 size: meta {worst['meta']:.2f} "
            f"against eager {worst['eager']:.2f} in the same run (goal: meta <= 0.60)"
        )


if __name__ == "__main__":
    main()
