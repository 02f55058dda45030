"""The HTTP policy server on loopback: valid requests, every 4xx case, and still serving after them."""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from lapa.config.serve import ServeConfig
from lapa.policy.server import create_app, running_server
from tests.fixtures.policy import make_tiny_inputs, make_untrained_policy, tiny_config

LIMITS = ServeConfig(max_image_bytes=60_000, max_image_pixels=200 * 200, max_instruction_chars=200)


def _encode(image: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from lapa.policy import LAPAPolicy

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("serve")
    cfg = tiny_config()
    policy = LAPAPolicy.from_pretrained(
        make_untrained_policy(cfg, make_tiny_inputs(root, cfg), root / "policy")
    )
    with (
        running_server(create_app(policy, LIMITS)) as url,
        httpx.Client(base_url=url, timeout=30.0) as client,
    ):
        yield policy, client


IMAGE = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)


def test_health(served):
    _, client = served
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["action_dim"] == 4


def test_multipart_and_json_requests_return_the_policy_action(served):
    policy, client = served
    expected = policy.predict(IMAGE, "open the drawer").tolist()
    png = _encode(IMAGE, "PNG")  # lossless: the server sees exactly IMAGE
    r = client.post(
        "/act", files={"image": ("frame.png", png, "image/png")}, data={"instruction": "open the drawer"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["action_dim"] == 4
    np.testing.assert_allclose(r.json()["action"], expected, rtol=0, atol=1e-6)
    r = client.post("/act", json={"image": base64.b64encode(png).decode(), "instruction": "open the drawer"})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["action"], expected, rtol=0, atol=1e-6)
    jpeg = _encode(IMAGE)
    r = client.post(
        "/act", files={"image": ("f.jpg", jpeg, "image/jpeg")}, data={"instruction": "push the block"}
    )
    assert r.status_code == 200 and len(r.json()["action"]) == 4


def _bad_requests():
    jpeg = _encode(IMAGE)
    big_pixels = _encode(np.zeros((256, 256, 3), np.uint8))  # small file, too many pixels
    big_bytes = _encode(np.random.default_rng(1).integers(0, 256, (190, 190, 3), dtype=np.uint8), "PNG")
    b64 = base64.b64encode(jpeg).decode()
    return {
        "no instruction (multipart)": (422, dict(files={"image": ("f.jpg", jpeg, "image/jpeg")})),
        "empty instruction (json)": (422, dict(json={"image": b64, "instruction": "  "})),
        "no instruction (json)": (422, dict(json={"image": b64})),
        "no image (json)": (422, dict(json={"instruction": "open"})),
        "no image (multipart)": (422, dict(data={"instruction": "open"}, files={"other": ("x", b"1")})),
        "not an image": (
            400,
            dict(
                files={"image": ("f.jpg", b"hello, not a jpeg", "image/jpeg")}, data={"instruction": "open"}
            ),
        ),
        "not base64": (400, dict(json={"image": "***", "instruction": "open"})),
        "too many pixels": (
            413,
            dict(files={"image": ("f.jpg", big_pixels, "image/jpeg")}, data={"instruction": "open"}),
        ),
        "too many bytes": (
            413,
            dict(files={"image": ("f.png", big_bytes, "image/png")}, data={"instruction": "open"}),
        ),
        "instruction too long": (413, dict(json={"image": b64, "instruction": "x" * 500})),
        "malformed json": (400, dict(content=b'{"image": ', headers={"content-type": "application/json"})),
        "json not an object": (400, dict(json=[1, 2])),
        "wrong content type": (415, dict(content=jpeg, headers={"content-type": "image/jpeg"})),
        "malformed multipart": (
            400,
            dict(content=b"garbage", headers={"content-type": "multipart/form-data; boundary=x"}),
        ),
    }


@pytest.mark.parametrize("case", list(_bad_requests()))
def test_bad_requests_get_4xx_with_a_message(served, case):
    _, client = served
    status, kwargs = _bad_requests()[case]
    r = client.post("/act", **kwargs)
    assert r.status_code == status, (case, r.status_code, r.text)
    assert isinstance(r.json()["detail"], str) and r.json()["detail"]


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming ``width`` x ``height`` RGB pixels, then IEND: no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_image_errors_say_what_is_wrong_in_words():
    from lapa.policy.server import RequestError, decode_image

    with pytest.raises(RequestError) as err:  # beyond Pillow's own decompression-bomb cap
        decode_image(_png_header(20000, 20000), LIMITS)
    assert (
        err.value.status == 413
        and f"exceeds the limit of {LIMITS.max_image_pixels} pixels" in err.value.message
    )
    with pytest.raises(RequestError) as err:
        decode_image(b"hello, not a jpeg", LIMITS)
    assert err.value.status == 400 and "not JPEG or PNG data" in err.value.message
    assert "BytesIO" not in err.value.message


def test_still_serving_after_bad_requests(served):
    _, client = served
    client.post("/act", content=b"{", headers={"content-type": "application/json"})
    r = client.post(
        "/act", files={"image": ("f.jpg", _encode(IMAGE), "image/jpeg")}, data={"instruction": "open"}
    )
    assert r.status_code == 200 and len(r.json()["action"]) == 4
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["errors"] >= 1


# ---------------------------------------------------------------------------------------------
# batching


class GatedPolicy:
    """The real policy, whose forward pass waits while the test holds the gate closed."""

    def __init__(self, policy) -> None:
        self.policy = policy
        self.action_dim = policy.action_dim
        self.backend = policy.backend
        self.gate = threading.Event()
        self.gate.set()

    def prepare_images(self, images):
        return self.policy.prepare_images(images)

    def predict_prepared(self, images, texts):
        assert self.gate.wait(60), "the test never opened the gate"
        return self.policy.predict_prepared(images, texts)


def _observations(count: int, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    rng = np.random.default_rng(seed)
    texts = ["open the drawer", "push the block to the goal", "reach the red target", "close it"]
    return [
        (rng.integers(0, 256, (int(rng.integers(48, 120)), 80, 3), dtype=np.uint8), texts[i % len(texts)])
        for i in range(count)
    ]


def _post(client: httpx.Client, image: np.ndarray, text: str) -> httpx.Response:
    return client.post(
        "/act", files={"image": ("f.png", _encode(image, "PNG"), "image/png")}, data={"instruction": text}
    )


def _post_once(url: str, image: np.ndarray, text: str) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=60.0) as client:
        return _post(client, image, text)


def _wait_for(client: httpx.Client, **expected) -> dict:
    deadline = time.monotonic() + 30
    while True:
        health = client.get("/health").json()
        if all(health[k] == v for k, v in expected.items()):
            return health
        assert time.monotonic() < deadline, (expected, health)
        time.sleep(0.01)


def _in_threads(fn, items) -> list:
    results: list = [None] * len(items)

    def run(i):
        results[i] = fn(*items[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    return threads, results


def test_concurrent_requests_each_get_the_action_of_their_own_input(served):
    policy, client = served
    observations = _observations(32)
    expected = [policy.predict(image, text) for image, text in observations]
    assert len({tuple(a) for a in expected}) > 4  # the inputs give different actions: a mix-up would show
    url = str(client.base_url)
    before = client.get("/health").json()

    def ask(i: int) -> list:
        with httpx.Client(base_url=url, timeout=60.0) as own:
            return [(j, _post(own, *observations[j])) for j in range(i, len(observations), 8)]

    threads, results = _in_threads(ask, [(i,) for i in range(8)])
    for t in threads:
        t.join()
    answered = [pair for chunk in results for pair in chunk]
    assert len(answered) == len(observations)
    for j, r in answered:
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(np.asarray(r.json()["action"], np.float32), expected[j])
    after = client.get("/health").json()
    assert after["batched_requests"] - before["batched_requests"] == len(observations)


def test_requests_that_arrive_while_the_model_is_busy_share_a_batch(served):
    policy = GatedPolicy(served[0])
    limits = ServeConfig(max_batch_size=4, max_queue=16, max_wait_ms=2.0)
    observations = _observations(7, seed=1)
    expected = [policy.policy.predict(image, text) for image, text in observations]
    with (
        running_server(create_app(policy, limits)) as url,
        httpx.Client(base_url=url, timeout=60.0) as client,
    ):
        policy.gate.clear()
        first, first_result = _in_threads(lambda i, t: _post_once(url, i, t), [observations[0]])
        _wait_for(client, batches=1, queued=0)  # the model holds the first request
        rest, rest_results = _in_threads(lambda i, t: _post_once(url, i, t), observations[1:])
        _wait_for(client, queued=6, preparing=0)
        policy.gate.set()
        for t in first + rest:
            t.join()
        health = client.get("/health").json()
    for r, action in zip(first_result + rest_results, expected):
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(np.asarray(r.json()["action"], np.float32), action)
    # 1 + 6 requests: the lone first one, then a full batch of 4 and the remaining 2
    assert (health["batches"], health["largest_batch"], health["batched_requests"]) == (3, 4, 7)


def test_a_full_queue_answers_503_and_the_server_recovers(served):
    policy = GatedPolicy(served[0])
    limits = ServeConfig(max_batch_size=1, max_queue=2)
    image, text = _observations(1, seed=2)[0]
    with (
        running_server(create_app(policy, limits)) as url,
        httpx.Client(base_url=url, timeout=60.0) as client,
    ):
        policy.gate.clear()
        held, held_results = _in_threads(lambda i, t: _post_once(url, i, t), [(image, text)])
        _wait_for(client, batches=1)
        waiting, waiting_results = _in_threads(lambda i, t: _post_once(url, i, t), [(image, text)] * 2)
        _wait_for(client, queued=2, preparing=0)
        r = _post(client, image, text)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "busy" in r.json()["detail"] and "serve.max_queue=2" in r.json()["detail"]
        policy.gate.set()
        for t in held + waiting:
            t.join()
        assert all(x.status_code == 200 for x in held_results + waiting_results)
        assert _post(client, image, text).status_code == 200  # room again
        assert client.get("/health").json()["busy"] == 1


# ---------------------------------------------------------------------------------------------
# 16-bit images


def _png_rgb16(image: np.ndarray) -> bytes:
    """A 48-bit RGB PNG (Pillow cannot write one): 16 bits per channel, big-endian rows."""
    import struct
    import zlib

    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_16_bit_pngs_are_scaled_to_8_bits_not_saturated(served):
    policy, client = served
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    expected = policy.predict(np.repeat(grey[..., None], 3, axis=-1), "open the drawer")
    saturated = policy.predict(np.full((64, 64, 3), 255, np.uint8), "open the drawer")
    assert not np.array_equal(expected, saturated)  # the old answer would fail this test
    grey16 = Image.fromarray(grey.astype(np.uint16) * 257)
    assert grey16.mode == "I;16"
    r = client.post(
        "/act",
        files={"image": ("f.png", _encode_pil(grey16), "image/png")},
        data={"instruction": "open the drawer"},
    )
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.asarray(r.json()["action"], np.float32), expected)

    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    r = client.post(
        "/act",
        files={"image": ("f.png", _png_rgb16(rgb.astype(np.uint16) * 257), "image/png")},
        data={"instruction": "push the block"},
    )
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(
        np.asarray(r.json()["action"], np.float32), policy.predict(rgb, "push the block")
    )


def _encode_pil(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_a_port_out_of_range_is_refused_at_start(tmp_path, capsys, port):
    from lapa.commands import main

    with pytest.raises(SystemExit) as exc:  # before the policy is looked at
        main(["serve", "--policy", str(tmp_path / "no-policy"), "--port", port])
    assert exc.value.code == 1
    assert f"serve.port (--port) must be in [1, 65535], got {port}" in capsys.readouterr().err


def test_a_port_in_use_is_refused_at_start_with_host_and_port(tmp_path):
    import socket
    import subprocess
    import sys

    cfg = tiny_config()
    policy_dir = make_untrained_policy(cfg, make_tiny_inputs(tmp_path, cfg), tmp_path / "policy")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "lapa", "serve", "--policy", str(policy_dir), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode == 1, proc.stderr
    assert f"lapa serve: error: cannot listen on 127.0.0.1:{port}: address already in use" in proc.stderr
    assert "serving" not in proc.stdout + proc.stderr
