"""HTTP policy server: a robot controller in another process asks ``POST /act`` for an action.

Requests carry one image and an instruction, either as ``multipart/form-data`` (fields
``image``: JPEG/PNG bytes, ``instruction``: text) or as JSON (``{"image": base64, "instruction":
...}``). Every bad request (no instruction, bytes that are not an image, an image over the byte
or pixel limit, a malformed body) is answered with a 4xx status and ``{"detail": message}``;
the server keeps serving. Multipart bodies are parsed with the standard library's email parser,
so no extra dependency is needed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from email import policy as email_policy
from email.parser import BytesParser
from typing import Any, Protocol

import numpy as np
from fastapi import Request  # at module level: FastAPI resolves the endpoint's annotations here

from lapa.config.serve import ServeConfig

log = logging.getLogger(__name__)


class Policy(Protocol):
    action_dim: int

    def predict(self, image: Any, instruction: str) -> np.ndarray: ...


class RequestError(Exception):
    """A client error with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_image(data: bytes, limits: ServeConfig) -> np.ndarray:
    """JPEG/PNG bytes -> uint8 HWC RGB, refusing oversized images before decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestError(422, "the image is empty")
    if len(data) > limits.max_image_bytes:
        raise RequestError(
            413, f"image of {len(data)} bytes exceeds the limit of {limits.max_image_bytes} bytes"
        )
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise RequestError(400, f"the image bytes are not a readable image: {exc}") from exc
    if img.format not in ("JPEG", "PNG"):
        raise RequestError(415, f"unsupported image format {img.format}; send JPEG or PNG")
    width, height = img.size
    if width * height > limits.max_image_pixels:
        raise RequestError(
            413, f"image of {width}x{height} pixels exceeds the limit of {limits.max_image_pixels} pixels"
        )
    try:
        rgb = img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise RequestError(400, f"the image could not be decoded: {exc}") from exc
    return np.asarray(rgb, dtype=np.uint8)


def _check_instruction(value: Any, limits: ServeConfig) -> str:
    if value is None:
        raise RequestError(422, "missing 'instruction'")
    if not isinstance(value, str):
        raise RequestError(422, f"'instruction' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RequestError(422, "'instruction' is empty")
    if len(value) > limits.max_instruction_chars:
        raise RequestError(413, f"'instruction' longer than {limits.max_instruction_chars} characters")
    return value


def parse_json_body(body: bytes, limits: ServeConfig) -> tuple[bytes, str]:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"malformed JSON body: {exc}") from exc
    if not isinstance(payload, dict):
        raise RequestError(400, "the JSON body must be an object with 'image' and 'instruction'")
    instruction = _check_instruction(payload.get("instruction"), limits)
    encoded = payload.get("image")
    if encoded is None:
        raise RequestError(422, "missing 'image' (base64-encoded JPEG or PNG)")
    if not isinstance(encoded, str):
        raise RequestError(422, "'image' must be a base64 string")
    if encoded.startswith("data:") and "," in encoded:  # data URL
        encoded = encoded.split(",", 1)[1]
    if len(encoded) > limits.max_image_bytes * 4 // 3 + 8:
        raise RequestError(413, f"image exceeds the limit of {limits.max_image_bytes} bytes")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(400, f"'image' is not valid base64: {exc}") from exc
    return data, instruction


def parse_multipart_body(body: bytes, content_type: str, limits: ServeConfig) -> tuple[bytes, str]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=email_policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise RequestError(400, "malformed multipart body")
    fields: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[name] = part.get_payload(decode=True) or b""
    if message.defects and not fields:
        raise RequestError(400, f"malformed multipart body: {message.defects[0]!r}")
    raw_instruction = fields.get("instruction")
    try:
        instruction = raw_instruction.decode("utf-8") if raw_instruction is not None else None
    except UnicodeDecodeError as exc:
        raise RequestError(400, "'instruction' is not UTF-8 text") from exc
    instruction = _check_instruction(instruction, limits)
    if "image" not in fields:
        raise RequestError(422, "missing 'image' file field")
    return fields["image"], instruction


def create_app(policy: Policy, limits: ServeConfig | None = None, name: str = "lapa-policy"):
    """The FastAPI application around a loaded policy."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    limits = limits or ServeConfig()
    app = FastAPI(title=name)
    lock = threading.Lock()  # one forward pass at a time: the model is not re-entrant
    max_body = limits.max_image_bytes * 4 // 3 + limits.max_instruction_chars * 4 + 64_000
    stats = {"requests": 0, "errors": 0}

    def _predict(image: np.ndarray, instruction: str) -> np.ndarray:
        with lock:
            return policy.predict(image, instruction)

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "name": name,
            "action_dim": int(policy.action_dim),
            "backend": getattr(policy, "backend", "torch"),
            **stats,
        }

    @app.post("/act")
    async def act(request: Request):
        stats["requests"] += 1
        try:
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_body:
                raise RequestError(413, f"request body of {declared} bytes exceeds {max_body} bytes")
            body = bytearray()
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > max_body:
                    raise RequestError(413, f"request body exceeds {max_body} bytes")
            content_type = request.headers.get("content-type", "")
            kind = content_type.split(";", 1)[0].strip().lower()
            if kind == "application/json":
                data, instruction = parse_json_body(bytes(body), limits)
            elif kind == "multipart/form-data":
                data, instruction = parse_multipart_body(bytes(body), content_type, limits)
            else:
                raise RequestError(415, "send multipart/form-data (image, instruction) or application/json")
            image = decode_image(data, limits)
        except RequestError as exc:
            stats["errors"] += 1
            return JSONResponse({"detail": exc.message}, status_code=exc.status)
        start = time.perf_counter()
        action = await run_in_threadpool(_predict, image, instruction)
        latency_ms = (time.perf_counter() - start) * 1000
        values = np.asarray(action, dtype=np.float64).reshape(-1).tolist()
        return {"action": values, "action_dim": len(values), "latency_ms": latency_ms}

    return app


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(
    app, host: str = "127.0.0.1", port: int | None = None, timeout: float = 30.0
) -> Iterator[str]:
    """Run ``app`` under uvicorn in a background thread; yield its base URL; stop it on exit."""
    import uvicorn

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the policy server did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)


def serve(policy: Policy, limits: ServeConfig, name: str = "lapa-policy") -> None:
    """Serve until interrupted (the ``lapa serve`` command)."""
    import uvicorn

    app = create_app(policy, limits, name=name)
    log.info("serving %s on http://%s:%d (POST /act, GET /health)", name, limits.host, limits.port)
    uvicorn.run(app, host=limits.host, port=limits.port, log_level="info")
