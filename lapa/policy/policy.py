"""The deployable policy: a self-contained directory in the manner of a Hugging Face model.

Layout::

    config.json               # format, the foundation section, action_dim, num_bins, provenance
    llm_config.json           # the exact LlamaConfig
    model.safetensors         # all weights
    action_stats.json         # bins <-> continuous actions
    tokenizer/                # HF tokenizer
    preprocessor_config.json  # how raw camera images become model input (see ``prepare_images``)

Loading reads safetensors, JSON and the tokenizer only: nothing is unpickled and nothing is
downloaded. Raw images go through the same steps as the demonstration data did (the shard
writer's resize and centre crop, the loader's resize, then VLAProcessor), so a camera frame
and a training sample of the same scene give the same model input.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lapa.data.action_codec import ActionStats
from lapa.data.images import RESAMPLER
from lapa.utils.io import atomic_directory, atomic_write_json, read_json_object

log = logging.getLogger(__name__)

FORMAT = "lapa.policy"
VERSION = 1
INPUT_NAMES = ("images", "input_ids", "attention_mask")  # VLAProcessor's outputs, in forward's order
REQUIRED_FILES = (
    "config.json",
    "llm_config.json",
    "model.safetensors",
    "action_stats.json",
    "tokenizer",
    "preprocessor_config.json",
)
# the integer settings loading and preprocessing read, per file (each >= 1)
REQUIRED_INTEGERS = {
    "config.json": ("action_dim", "num_bins"),
    "preprocessor_config.json": (
        "shard_resize",
        "shard_crop",
        "loader_image_size",
        "image_size",
        "max_text_tokens",
    ),
}


def _container(cfg: Any) -> dict:
    from dataclasses import asdict, is_dataclass

    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return asdict(cfg) if is_dataclass(cfg) else dict(cfg)


def preprocessor_settings(foundation_cfg: Any, sharding_cfg: Any, loader_cfg: Any) -> dict:
    """What ``preprocessor_config.json`` records: the image path of the demonstration data."""
    return {
        "processor_class": "VLAProcessor",
        "shard_resize": int(sharding_cfg.resize),  # shorter side before the centre crop
        "shard_crop": int(sharding_cfg.crop),  # the square stored in the shards
        "loader_image_size": int(loader_cfg.image_size),  # the loader's resize of that square
        "image_size": int(foundation_cfg.vision.image_size),  # VLAProcessor's output size
        "max_text_tokens": int(foundation_cfg.max_text_tokens),
        "image_format": "uint8 RGB; each vision tower normalises with its own mean/std",
        "resampler": RESAMPLER,  # lapa.data.images: every resize above uses it
    }


def save_policy(
    model: torch.nn.Module,
    tokenizer: Any,
    foundation_cfg: Any,
    stats: ActionStats,
    preprocessor: dict,
    out_dir: str | os.PathLike,
    extra: dict | None = None,
) -> None:
    """Write the policy directory atomically (a killed job leaves no complete-looking directory)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    config = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": "VLAModel+ContinuousActionHead",
        "num_queries": int(model.num_queries),
        "action_dim": stats.action_dim,
        "num_bins": stats.num_bins,
        "foundation": _container(foundation_cfg),
        **(extra or {}),
    }
    with atomic_directory(out_dir) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "llm_config.json").write_text(model.llm.config.to_json_string())
        tokenizer.save_pretrained(tmp / "tokenizer")
        stats.save(tmp / "action_stats.json")
        atomic_write_json(tmp / "preprocessor_config.json", preprocessor)
        atomic_write_json(tmp / "config.json", config)


BACKENDS = ("torch", "onnx")
ONNX_FILE = "model.onnx"  # an exported graph inside the policy directory is used as it is
FINGERPRINT_KEY = "lapa.policy_fingerprint"  # ONNX metadata: the weights the graph was exported from
TEXT_CACHE_SIZE = 1024  # batches of instructions whose token ids a policy remembers


def policy_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of the files that decide the network (config, Llama config, weights) of a policy directory."""
    path = Path(path)
    digest = hashlib.sha256()
    for name in ("config.json", "llm_config.json", "model.safetensors"):
        digest.update(name.encode() + b"\0")
        with open(path / name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def onnx_cache_path(path: str | os.PathLike) -> Path:
    """Where ``backend="onnx"`` exports a policy that holds no ``model.onnx``: a hidden folder beside it.

    Beside, not inside: the policy directory is an artifact of the workflow and stays unchanged.
    """
    path = Path(path)
    return path.parent / f".{path.name}.onnx-cache" / ONNX_FILE


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown policy backend {backend!r}: choose one of {', '.join(map(repr, BACKENDS))}"
        )
    return backend


def _read_policy_files(path: Path) -> tuple[dict, dict, ActionStats]:
    if not path.is_dir():
        raise FileNotFoundError(f"policy directory not found: {path}")
    for name in REQUIRED_FILES:
        if not (path / name).exists():
            raise FileNotFoundError(f"{path} is not a policy directory: {name} is missing")
    config = read_json_object(path / "config.json")
    if config.get("format") != FORMAT:
        raise ValueError(f"{path / 'config.json'}: not a policy config (format={config.get('format')!r})")
    preprocessor = read_json_object(path / "preprocessor_config.json")
    for name, blob in (("config.json", config), ("preprocessor_config.json", preprocessor)):
        for key in REQUIRED_INTEGERS[name]:
            value = blob.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{path / name}: {key} must be an integer >= 1, got {value!r}")
    if not isinstance(config.get("foundation"), dict):
        raise ValueError(f"{path / 'config.json'}: the foundation section (the network's shape) is missing")
    stats = ActionStats.load(path / "action_stats.json")
    if stats.action_dim != config["action_dim"] or stats.num_bins != config["num_bins"]:
        raise ValueError(f"{path}: action_stats.json disagrees with config.json on action_dim/num_bins")
    return config, preprocessor, stats


def _load_model(path: Path, config: dict, stats: ActionStats) -> torch.nn.Module:
    from omegaconf import OmegaConf
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaModel
    from transformers.initialization import no_init_weights

    from lapa.policy.build import build_policy_model
    from lapa.vla.checkpoint import _foundation_section

    fcfg = _foundation_section(OmegaConf.create(config["foundation"]))
    llm_config = LlamaConfig.from_dict(read_json_object(path / "llm_config.json"))
    llm_config._attn_implementation = fcfg.llm.attn_implementation or "sdpa"
    with no_init_weights():  # every weight comes from the file: skip the random initialisation
        llm = LlamaModel(llm_config)
        model = build_policy_model(fcfg, stats.action_dim, stats.num_bins, llm=llm)
    from safetensors import SafetensorError

    try:
        state = load_file(str(path / "model.safetensors"), device="cpu")
    except (SafetensorError, OSError) as exc:  # a file cut short, or not safetensors at all
        raise ValueError(f"{path / 'model.safetensors'}: unreadable weights: {exc}") from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path / 'model.safetensors'} does not match the policy: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model


def _onnx_session(onnx_path: Path, device: torch.device, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ValueError(f"{onnx_path}: not a loadable ONNX model: {exc}") from exc


def _exported_fingerprint(session) -> str | None:
    return session.get_modelmeta().custom_metadata_map.get(FINGERPRINT_KEY)


class LAPAPolicy:
    """A loaded policy: ``predict(image, instruction)`` returns the continuous action (float32 [A]).

    Two backends run the network on the same preprocessing: ``torch`` (the PyTorch model,
    ``self.model``) and ``onnx`` (the exported graph under ONNX Runtime, ``self.session``;
    ``self.model`` is None). Both give the same bins on the same inputs.
    """

    def __init__(
        self,
        model,
        tokenizer,
        stats: ActionStats,
        preprocessor: dict,
        config: dict,
        path=None,
        device: str | torch.device = "cpu",
        *,
        session=None,
        onnx_path: str | os.PathLike | None = None,
    ) -> None:
        from lapa.vla.processor import VLAProcessor

        if (model is None) == (session is None):
            raise ValueError("LAPAPolicy needs either a PyTorch model or an ONNX Runtime session")
        self.model = model.eval() if model is not None else None
        self.session = session
        self.backend = "onnx" if session is not None else "torch"
        self.onnx_path = Path(onnx_path) if onnx_path is not None else None
        self.tokenizer = tokenizer
        self.stats = stats
        self.preprocessor = preprocessor
        self.config = config
        self.path = path
        self.device = torch.device(device)
        self.processor = VLAProcessor(tokenizer, preprocessor["image_size"], preprocessor["max_text_tokens"])
        self._text_cache: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self._text_lock = threading.Lock()
        from lapa.vla.heads import UNRECORDED_DECODING, check_decoding

        # how logits become actions: config.json's "decoding" (directories that record none: argmax)
        self.decoding = check_decoding(
            config.get("decoding", UNRECORDED_DECODING), f"{path or 'policy'}/config.json: decoding"
        )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        backend: str = "torch",
        onnx_path: str | os.PathLike | None = None,
        threads: int | None = None,
    ) -> LAPAPolicy:
        """Load a policy directory with local files only (safetensors, JSON, tokenizer files, ONNX).

        ``backend="torch"`` builds the PyTorch model (on ``device``, in ``dtype``).
        ``backend="onnx"`` runs the network under ONNX Runtime (CPU; CUDA where its provider is
        installed), from, in this order: ``onnx_path``; ``<path>/model.onnx``; the export cache
        beside the directory (``onnx_cache_path``), exported there atomically on first use and
        again whenever the policy's weights change. ``threads``: ONNX Runtime's intra-op threads
        (default: torch's). Raises ValueError for an unknown backend, a graph exported from other
        weights, a ``dtype`` with the ONNX backend, unreadable weights or a config without a setting
        it needs (each naming the file and key); FileNotFoundError for missing files.
        """
        from transformers import AutoTokenizer

        _check_backend(backend)
        path = Path(path)
        config, preprocessor, stats = _read_policy_files(path)
        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
        if backend == "torch":
            if onnx_path is not None:
                raise ValueError("onnx_path is for backend='onnx'")
            model = _load_model(path, config, stats).to(device=device, dtype=dtype)
            return cls(model, tokenizer, stats, preprocessor, config, path=path, device=device)
        if dtype not in (None, torch.float32):
            raise ValueError(f"dtype={dtype} is for backend='torch'; the ONNX graph computes in float32")
        device = torch.device(device)
        fingerprint = policy_fingerprint(path)
        explicit = Path(onnx_path) if onnx_path is not None else path / ONNX_FILE
        if onnx_path is not None or explicit.is_file():
            if not explicit.is_file():
                raise FileNotFoundError(f"ONNX model not found: {explicit}")
            session = _onnx_session(explicit, device, threads)
            exported = _exported_fingerprint(session)
            if exported is None:
                log.warning("%s records no policy fingerprint: cannot check it matches %s", explicit, path)
            elif exported != fingerprint:
                raise ValueError(
                    f"{explicit} was exported from other weights than {path / 'model.safetensors'}: "
                    f"export it again (lapa export --policy {path} --out {explicit})"
                )
            onnx_file = explicit
        else:
            onnx_file = onnx_cache_path(path)
            session = _onnx_session(onnx_file, device, threads) if onnx_file.is_file() else None
            if session is None or _exported_fingerprint(session) != fingerprint:
                from lapa.policy.export import export_onnx

                log.info("exporting %s to ONNX at %s", path, onnx_file)
                reference = cls(
                    _load_model(path, config, stats), tokenizer, stats, preprocessor, config, path
                )
                try:
                    export_onnx(reference, onnx_file, fingerprint=fingerprint)
                except OSError as exc:
                    raise OSError(
                        f"cannot write the ONNX export of {path} to {onnx_file} ({exc}); export it "
                        f"elsewhere (lapa export --policy {path} --out FILE) and pass onnx_path=FILE"
                    ) from exc
                del reference
                session = _onnx_session(onnx_file, device, threads)
        return cls(
            None,
            tokenizer,
            stats,
            preprocessor,
            config,
            path=path,
            device=device,
            session=session,
            onnx_path=onnx_file,
        )

    # ------------------------------------------------------------------ properties
    @property
    def action_dim(self) -> int:
        return self.stats.action_dim

    @property
    def image_size(self) -> int:
        return int(self.preprocessor["image_size"])

    # ------------------------------------------------------------------ preprocessing
    def prepare_images(self, images: Sequence[Any]) -> torch.Tensor:
        """Raw HWC uint8 / PIL images -> uint8 [B,3,S,S] exactly as demonstration samples became batches."""
        from lapa.data.images import resize_crop, resize_square, to_uint8_rgb

        p = self.preprocessor
        crop, resize = p["shard_crop"], p["shard_resize"]
        out = []
        for image in images:
            arr = np.ascontiguousarray(resize_crop(to_uint8_rgb(image), resize, crop))
            if not arr.flags.writeable:  # a decoded PIL image's buffer: torch wants a writable one
                arr = arr.copy()
            t = torch.from_numpy(arr).permute(2, 0, 1)[None]
            out.append(resize_square(t, p["loader_image_size"])[0])
        return torch.stack(out)

    # ------------------------------------------------------------------ inference
    def text_inputs(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``VLAProcessor.text`` of a batch of instructions (input_ids, attention_mask: int64 [B, L]).

        Remembered per batch of instructions (the last ``TEXT_CACHE_SIZE``): a robot repeats its
        instruction at every step, so tokenising it once is enough. Thread-safe.
        """
        key = tuple(texts)
        with self._text_lock:
            hit = self._text_cache.get(key)
        if hit is None:
            hit = self.processor.text(list(key))
            with self._text_lock:
                while len(self._text_cache) >= TEXT_CACHE_SIZE:
                    self._text_cache.pop(next(iter(self._text_cache)))
                self._text_cache[key] = hit
        return hit

    @torch.inference_mode()
    def logits_from_tensors(self, images_uint8: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """The training batch path: loader images [B,3,H,W] + instructions -> logits [B, A, bins]."""
        images = self.processor.images(images_uint8)
        input_ids, attention_mask = self.text_inputs(texts)
        if images.shape[0] != input_ids.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {input_ids.shape[0]} instructions")
        inputs = {"images": images, "input_ids": input_ids, "attention_mask": attention_mask}
        if self.session is not None:
            feed = {k: inputs[k].numpy() for k in INPUT_NAMES}
            return torch.from_numpy(self.session.run(["logits"], feed)[0])
        return self.model(*(inputs[k].to(self.device) for k in INPUT_NAMES)).float()

    def bins_from_tensors(self, images_uint8: torch.Tensor, texts: Sequence[str]) -> np.ndarray:
        return self.logits_from_tensors(images_uint8, texts).argmax(-1).cpu().numpy().astype(np.int64)

    def predict_bins(self, images: Sequence[Any], instructions: Sequence[str]) -> np.ndarray:
        if isinstance(instructions, str):
            raise TypeError("predict_bins takes a list of instructions; use predict() for one")
        if len(images) != len(instructions):
            raise ValueError(f"{len(images)} images but {len(instructions)} instructions")
        if len(images) == 0:
            return np.zeros((0, self.action_dim), dtype=np.int64)
        return self.bins_from_tensors(self.prepare_images(images), instructions)

    def decode(self, logits: torch.Tensor) -> np.ndarray:
        """Logits [B, A, bins] -> continuous actions float32 [B, A] with ``self.decoding``."""
        from lapa.vla.heads import decode_actions

        return decode_actions(logits, self.stats, self.decoding)

    def predict_prepared(self, images_uint8: torch.Tensor, instructions: Sequence[str]) -> np.ndarray:
        """Continuous actions float32 [B, A] for images through ``prepare_images`` (uint8 [B,3,S,S])."""
        return self.decode(self.logits_from_tensors(images_uint8, instructions))

    def predict_batch(self, images: Sequence[Any], instructions: Sequence[str]) -> np.ndarray:
        """Continuous actions float32 [B, A], decoded with ``self.decoding`` (recorded in config.json)."""
        if isinstance(instructions, str):
            raise TypeError("predict_batch takes a list of instructions; use predict() for one")
        if len(images) != len(instructions):
            raise ValueError(f"{len(images)} images but {len(instructions)} instructions")
        if len(images) == 0:
            return np.zeros((0, self.action_dim), dtype=np.float32)
        return self.predict_prepared(self.prepare_images(images), instructions)

    def predict(self, image: Any, instruction: str) -> np.ndarray:
        """One observation and instruction -> the continuous action float32 [A]."""
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("the instruction must be a non-empty string")
        return self.predict_batch([image], [instruction])[0]
