"""HTTP policy server: a robot controller in another process asks ``POST /act`` for an action.

Requests carry one image and an instruction, either as ``multipart/form-data`` (fields
``image``: JPEG/PNG bytes, ``instruction``: text) or as JSON (``{"image": base64, "instruction":
...}``). Every bad request (no instruction, bytes that are not an image, an image over the byte
or pixel limit, a malformed body) is answered with a 4xx status and ``{"detail": message}``;
the server keeps serving. 16-bit PNGs (grey ``I;16`` or 48-bit RGB) are scaled to 8 bits
(``lapa.data.images.to_uint8_rgb``), never clipped.

Concurrent requests are batched. Each request is parsed, decoded and preprocessed in a worker
thread of its own (these steps run in parallel), then waits in a bounded queue for the model;
one model thread takes up to ``serve.max_batch_size`` waiting requests at a time and answers
them with one forward pass, each with the row of its own input. When the model is free and
requests are still being decoded, it waits at most ``serve.max_wait_ms`` for them to join the
batch; a lone client never waits. Beyond ``serve.max_queue`` requests admitted and not yet in a
batch, new requests get 503 at once (before their image is decoded).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import io
import json
import logging
import quopri
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from email import policy as email_policy
from email.parser import BytesHeaderParser
from typing import Any, Protocol

import numpy as np
from fastapi import Request  # at module level: FastAPI resolves the endpoint's annotations here

from lapa.config.serve import ServeConfig

log = logging.getLogger(__name__)


class Policy(Protocol):
    action_dim: int

    def prepare_images(self, images: Sequence[Any]) -> Any: ...

    def predict_prepared(self, images: Any, instructions: Sequence[str]) -> np.ndarray: ...


class RequestError(Exception):
    """A client error with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_image(data: bytes, limits: ServeConfig) -> np.ndarray:
    """JPEG/PNG bytes -> uint8 HWC RGB, refusing oversized images before decoding the pixels.

    16-bit greyscale PNGs (PIL mode ``I;16``) are scaled by 255/65535, 48-bit RGB ones reduced to
    their high byte (Pillow's decoding); an image lapa cannot scale to 8 bits gets a 415.
    """
    from PIL import Image, UnidentifiedImageError

    from lapa.data.images import ImageFormatError, to_uint8_rgb

    if not data:
        raise RequestError(422, "the image is empty")
    if len(data) > limits.max_image_bytes:
        raise RequestError(
            413, f"image of {len(data)} bytes exceeds the limit of {limits.max_image_bytes} bytes"
        )
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as exc:  # Pillow's own cap, far above any serve limit
        raise RequestError(
            413, f"image exceeds the limit of {limits.max_image_pixels} pixels (Pillow: {exc})"
        ) from exc
    except UnidentifiedImageError as exc:  # its message names only an in-memory buffer
        raise RequestError(400, "the image bytes are not a readable image (not JPEG or PNG data)") from exc
    except OSError as exc:
        raise RequestError(400, f"the image bytes are not a readable image: {exc}") from exc
    if img.format not in ("JPEG", "PNG"):
        raise RequestError(415, f"unsupported image format {img.format}; send JPEG or PNG")
    width, height = img.size
    if width * height > limits.max_image_pixels:
        raise RequestError(
            413, f"image of {width}x{height} pixels exceeds the limit of {limits.max_image_pixels} pixels"
        )
    try:
        img.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise RequestError(400, f"the image could not be decoded: {exc}") from exc
    try:
        return to_uint8_rgb(img)
    except ImageFormatError as exc:
        raise RequestError(415, f"unsupported {img.format} image (mode {img.mode}): {exc}") from exc


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


_HEADERS = BytesHeaderParser(policy=email_policy.HTTP)


def multipart_fields(body: bytes, content_type: str) -> dict[str, bytes]:
    """The named fields of a ``multipart/form-data`` body (RFC 7578), by name.

    Parts are delimited with ``bytes.find`` (the payload is never scanned line by line, so a
    megabyte image costs about a copy); each part's header block goes through the standard
    library's header parser. Raises RequestError(400) for a body that is not well formed.
    """
    boundary = _HEADERS.parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")).get_param(
        "boundary"
    )
    if not boundary or not isinstance(boundary, str):
        raise RequestError(400, "malformed multipart body: the content type names no boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    pos = body.find(delimiter)
    if pos < 0:
        raise RequestError(400, "malformed multipart body: no part delimiter")
    fields: dict[str, bytes] = {}
    pos += len(delimiter)
    while not body.startswith(b"--", pos):  # the close delimiter ends the body
        line_end = body.find(b"\r\n", pos)
        if line_end < 0 or body[pos:line_end].strip(b" \t"):
            raise RequestError(400, "malformed multipart body: a delimiter line does not end")
        headers_end = body.find(b"\r\n\r\n", line_end)
        if headers_end < 0:
            raise RequestError(400, "malformed multipart body: a part's headers do not end")
        content_start = headers_end + 4
        next_delimiter = body.find(b"\r\n" + delimiter, content_start)
        if next_delimiter < 0:
            raise RequestError(400, "malformed multipart body: a part is not closed by the boundary")
        headers = _HEADERS.parsebytes(body[line_end + 2 : content_start])
        name = headers.get_param("name", header="content-disposition")
        content = body[content_start:next_delimiter]
        encoding = str(headers.get("content-transfer-encoding", "")).strip().lower()
        if encoding == "base64":
            try:
                content = base64.b64decode(content)
            except (binascii.Error, ValueError) as exc:
                raise RequestError(400, f"multipart field {name!r} is not valid base64: {exc}") from exc
        elif encoding == "quoted-printable":
            content = quopri.decodestring(content)
        if isinstance(name, str) and name:
            fields.setdefault(name, content)
        pos = next_delimiter + 2 + len(delimiter)
    return fields


def parse_multipart_body(body: bytes, content_type: str, limits: ServeConfig) -> tuple[bytes, str]:
    fields = multipart_fields(body, content_type)
    raw_instruction = fields.get("instruction")
    try:
        instruction = raw_instruction.decode("utf-8") if raw_instruction is not None else None
    except UnicodeDecodeError as exc:
        raise RequestError(400, "'instruction' is not UTF-8 text") from exc
    instruction = _check_instruction(instruction, limits)
    if "image" not in fields:
        raise RequestError(422, "missing 'image' file field")
    return fields["image"], instruction


class ServerBusy(Exception):
    """The request queue is full (``serve.max_queue``)."""


class Batcher:
    """The model thread: answers queued requests in batches of up to ``max_batch_size``.

    ``admit()`` reserves a place for a request about to be prepared (raises ServerBusy when
    ``max_queue`` requests are admitted and not yet in a batch), ``submit(ticket, images, text)``
    queues its preprocessed image and returns a Future of its action (float32 [A]); ``leave``
    gives the place back when a request fails before ``submit``.
    """

    def __init__(self, policy: Policy, max_batch_size: int, max_wait_ms: float, max_queue: int) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(
                f"serve.max_batch_size ({max_batch_size}) and serve.max_queue ({max_queue}) must be >= 1, "
                f"serve.max_wait_ms ({max_wait_ms}) >= 0"
            )
        self.policy = policy
        self.max_batch_size = int(max_batch_size)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.max_queue = int(max_queue)
        self._cond = threading.Condition()
        self._queue: collections.deque = collections.deque()
        self._preparing = 0  # admitted, not yet queued
        self._closed = False
        self.batches = 0
        self.batched_requests = 0
        self.largest_batch = 0
        self._thread = threading.Thread(target=self._run, name="lapa-policy-batcher", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- request side
    def admit(self) -> None:
        with self._cond:
            waiting = self._preparing + len(self._queue)
            if waiting >= self.max_queue:
                raise ServerBusy(
                    f"the server is busy: {waiting} requests are waiting for the model "
                    f"(serve.max_queue={self.max_queue}); retry shortly"
                )
            self._preparing += 1

    def leave(self) -> None:
        with self._cond:
            self._preparing -= 1
            self._cond.notify_all()

    def submit(self, image: Any, instruction: str) -> Future:
        future: Future = Future()
        with self._cond:
            self._preparing -= 1
            self._queue.append((image, instruction, future))
            self._cond.notify_all()
        return future

    def stats(self) -> dict:
        with self._cond:
            return {
                "queued": len(self._queue),
                "preparing": self._preparing,
                "batches": self.batches,
                "batched_requests": self.batched_requests,
                "largest_batch": self.largest_batch,
                "max_batch_size": self.max_batch_size,
            }

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    # ---------------------------------------------------------------- model side
    def _take(self) -> list | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed and not self._queue:
                return None
            batch = [self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))]
            # requests still being decoded join this batch if they arrive within max_wait
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch_size and not self._closed:
                if self._queue:
                    batch.append(self._queue.popleft())
                    continue
                remaining = deadline - time.monotonic()
                if self._preparing == 0 or remaining <= 0:
                    break
                self._cond.wait(remaining)
            self.batches += 1
            self.batched_requests += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            return batch

    def _run(self) -> None:
        import torch

        while (batch := self._take()) is not None:
            images, texts, futures = zip(*batch)
            try:
                actions = self.policy.predict_prepared(torch.cat(images), list(texts))
            except BaseException as exc:  # every waiting request learns of the failure
                log.exception("policy forward pass failed on a batch of %d", len(batch))
                for future in futures:
                    future.set_exception(exc)
                continue
            for future, action in zip(futures, actions):
                future.set_result(action)


def create_app(policy: Policy, limits: ServeConfig | None = None, name: str = "lapa-policy"):
    """The FastAPI application around a loaded policy (``app.state.batcher`` runs the model)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    limits = limits or ServeConfig()
    app = FastAPI(title=name)
    batcher = Batcher(policy, limits.max_batch_size, limits.max_wait_ms, limits.max_queue)
    app.state.batcher = batcher
    max_body = limits.max_image_bytes * 4 // 3 + limits.max_instruction_chars * 4 + 64_000
    stats = {"requests": 0, "errors": 0, "busy": 0}

    def _prepare(body: bytes, content_type: str) -> tuple[Any, str]:
        kind = content_type.split(";", 1)[0].strip().lower()
        if kind == "application/json":
            data, instruction = parse_json_body(body, limits)
        elif kind == "multipart/form-data":
            data, instruction = parse_multipart_body(body, content_type, limits)
        else:
            raise RequestError(415, "send multipart/form-data (image, instruction) or application/json")
        image = decode_image(data, limits)
        return policy.prepare_images([image]), instruction

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "name": name,
            "action_dim": int(policy.action_dim),
            "backend": getattr(policy, "backend", "torch"),
            **stats,
            **batcher.stats(),
        }

    @app.post("/act")
    async def act(request: Request):
        stats["requests"] += 1
        start = time.perf_counter()
        try:
            batcher.admit()
        except ServerBusy as exc:
            stats["busy"] += 1
            return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})
        submitted = False
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
            image, instruction = await run_in_threadpool(_prepare, bytes(body), content_type)
            future = batcher.submit(image, instruction)
            submitted = True
        except RequestError as exc:
            stats["errors"] += 1
            return JSONResponse({"detail": exc.message}, status_code=exc.status)
        finally:
            if not submitted:
                batcher.leave()
        action = await asyncio.wrap_future(future)
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
        batcher = getattr(app.state, "batcher", None)
        if batcher is not None:
            batcher.close()


class ListenError(OSError, ValueError):
    """The server cannot listen on the address it was given (port taken, host not local, no
    permission); a ``ValueError`` too, so ``lapa serve`` prints it as a one-line error."""


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv6 when ``host`` has a ``:``), as uvicorn binds one
    (``SO_REUSEADDR``); the server listens on it. Raises ``ListenError``
    ("cannot listen on HOST:PORT: address already in use") when the bind fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        reason = reason[:1].lower() + reason[1:]
        raise ListenError(f"cannot listen on {host}:{port}: {reason}") from exc
    sock.set_inheritable(True)
    return sock


def serve(
    policy: Policy, limits: ServeConfig, name: str = "lapa-policy", sock: socket.socket | None = None
) -> None:
    """Serve until interrupted (the ``lapa serve`` command), on ``sock`` when given (from
    ``listen_socket``, bound before the policy is loaded) else on a socket bound to
    ``limits.host:limits.port`` now. Raises ``ListenError`` when that address cannot be bound."""
    import uvicorn

    sock = sock or listen_socket(limits.host, limits.port)
    app = create_app(policy, limits, name=name)
    log.info(
        "serving %s on http://%s:%d (POST /act, GET /health; batches of up to %d, backend %s)",
        name,
        limits.host,
        limits.port,
        limits.max_batch_size,
        getattr(policy, "backend", "torch"),
    )
    server = uvicorn.Server(uvicorn.Config(app, host=limits.host, port=limits.port, log_level="info"))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C ends the server quietly, as under uvicorn.run
        pass
    finally:
        sock.close()
        app.state.batcher.close()
