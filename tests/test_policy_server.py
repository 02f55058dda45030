"""The HTTP policy server on loopback: valid requests, every 4xx case, and still serving after them."""

from __future__ import annotations

import base64
import io

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


def test_still_serving_after_bad_requests(served):
    _, client = served
    client.post("/act", content=b"{", headers={"content-type": "application/json"})
    r = client.post(
        "/act", files={"image": ("f.jpg", _encode(IMAGE), "image/jpeg")}, data={"instruction": "open"}
    )
    assert r.status_code == 200 and len(r.json()["action"]) == 4
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["errors"] >= 1
