"""``lapa serve`` and ``lapa export``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lapa.commands import add_config_arguments, add_device_argument, device_from_args, load_config_from_args

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a policy over HTTP (POST /act, GET /health)",
        description="Load a policy directory and answer POST /act (an image as multipart JPEG/PNG or base64 "
        "JSON, and an instruction) with the continuous action as JSON; concurrent requests are batched. "
        "Settings: serve.* (limits, backend, threads, max_batch_size, max_wait_ms, max_queue). "
        "Reads: policy directory. Writes: nothing (with --backend onnx and no DIR/model.onnx, the ONNX "
        "export cache beside the policy directory on first use).",
    )
    p.add_argument("--policy", required=True, help="policy directory (lapa finetune)")
    p.add_argument("--host", default=None, help="bind address (default serve.host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default serve.port, 8000)")
    add_device_argument(p)
    p.add_argument(
        "--backend",
        choices=["torch", "onnx"],
        default=None,
        help="run the network with PyTorch or ONNX Runtime (default serve.backend, torch); onnx exports "
        "the policy on first use into a cache beside its directory unless DIR/model.onnx exists",
    )
    add_config_arguments(p)
    p.set_defaults(func=run_serve)

    p = sub.add_parser(
        "export",
        help="export a policy's network to ONNX and check it against PyTorch",
        description="Export preprocessed images + token ids + mask -> action logits to ONNX (TorchScript "
        "tracing), then compare onnxruntime with PyTorch on example inputs. Reads: policy directory. "
        "Writes: the ONNX file.",
    )
    p.add_argument("--policy", required=True, help="policy directory (lapa finetune)")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument(
        "--atol", type=float, default=1e-4, help="largest logit difference accepted (default 1e-4)"
    )
    add_config_arguments(p)
    p.set_defaults(func=run_export)


def run_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from omegaconf import OmegaConf

    from lapa.policy.policy import LAPAPolicy
    from lapa.policy.server import listen_socket, serve

    cfg = load_config_from_args(args)
    limits = OmegaConf.to_object(cfg.serve)
    limits = replace(
        limits,
        host=args.host or limits.host,
        port=args.port or limits.port,
        backend=args.backend or limits.backend,
    )
    if limits.threads < 1:
        raise ValueError(f"serve.threads must be >= 1, got {limits.threads}")
    if not 1 <= int(limits.port) <= 65535:
        raise ValueError(f"serve.port (--port) must be in [1, 65535], got {limits.port}")
    sock = listen_socket(limits.host, int(limits.port))  # a taken port fails before the policy loads
    try:
        import torch

        torch.set_num_threads(limits.threads)
        policy = LAPAPolicy.from_pretrained(
            args.policy, device=device_from_args(args), backend=limits.backend, threads=limits.threads
        )
    except BaseException:
        sock.close()
        raise
    serve(policy, limits, name=str(args.policy), sock=sock)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from lapa.policy.export import INPUT_NAMES, example_inputs, export_onnx, onnx_logits
    from lapa.policy.policy import LAPAPolicy

    load_config_from_args(args)  # validates -c/overrides like every command
    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: is a directory; give the .onnx file to write")
    policy = LAPAPolicy.from_pretrained(args.policy, device="cpu")
    export_onnx(policy, args.out, opset=args.opset)
    inputs = example_inputs(policy, batch=3)
    import torch

    with torch.no_grad():
        ref = policy.model(*(inputs[k] for k in INPUT_NAMES)).float().numpy()
    diff = float(abs(onnx_logits(args.out, inputs) - ref).max())
    if diff > args.atol:
        raise ValueError(
            f"{args.out}: onnxruntime and PyTorch disagree (max |diff| {diff:.3g} > atol {args.atol})"
        )
    log.info("exported %s; onnxruntime matches PyTorch (max |diff| %.3g)", args.out, diff)
    return 0
