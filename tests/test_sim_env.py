"""The Meta-World environment wrapper: seeded layouts, upright non-blank frames, expert success."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("metaworld", reason="needs the 'sim' extra (metaworld)")

from lapa.config.sim import ZoomCameraConfig  # noqa: E402
from lapa.sim.env import MetaWorldEnv  # noqa: E402
from lapa.sim.instructions import INSTRUCTIONS, instruction_for, task_for  # noqa: E402
from lapa.sim.policies import ScriptedExpert  # noqa: E402

pytestmark = pytest.mark.sim


def _finger_row(image: np.ndarray) -> float:
    """Mean image row of the gripper's cyan finger pads."""
    mask = (image[..., 0] < 90) & (image[..., 1] > 140) & (image[..., 2] > 140)
    rows = np.nonzero(mask)[0]
    assert len(rows) > 0, "gripper fingers not visible"
    return float(rows.mean())


def test_instructions_cover_every_task():
    from metaworld.policies import ENV_POLICY_MAP

    assert set(INSTRUCTIONS) == set(ENV_POLICY_MAP)
    assert len(set(INSTRUCTIONS.values())) == len(INSTRUCTIONS)  # an instruction identifies its task
    assert task_for(instruction_for("drawer-open-v3")) == "drawer-open-v3"
    with pytest.raises(KeyError, match="no-such-task"):
        instruction_for("no-such-task")


def test_reset_is_seeded():
    with MetaWorldEnv("push-v3", camera="zoom", image_size=32) as env:
        a_img, a_obs = env.reset(seed=7)
        a_layout = env.layout
        env.step(np.array([1.0, 0, 0, 0]))
        b_img, _ = env.reset(seed=8)
        b_layout = env.layout
        c_img, c_obs = env.reset(seed=7)
        np.testing.assert_array_equal(a_layout, env.layout)
        np.testing.assert_array_equal(a_img, c_img)
        np.testing.assert_array_equal(a_obs, c_obs)
        assert not np.allclose(a_layout, b_layout)
        assert not np.array_equal(a_img, b_img)


@pytest.mark.parametrize("camera", ["zoom", "corner"])
def test_frames_upright_and_not_blank(camera):
    with MetaWorldEnv("reach-v3", camera=camera, image_size=64) as env:
        image, _ = env.reset(seed=0)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert image.std() > 10
        start = _finger_row(image)
        for _ in range(15):  # raise the hand: in an upright image the gripper moves up
            image, _, _, _ = env.step(np.array([0, 0, 1.0, 0]))
        up = _finger_row(image)
        for _ in range(30):
            image, _, _, _ = env.step(np.array([0, 0, -1.0, 0]))
        down = _finger_row(image)
        assert up < start - 2 and down > up + 4, (start, up, down)


def test_blank_frame_raises():
    # a camera in the sky looking up sees nothing: the blank-frame guard must fire
    sky = ZoomCameraConfig(elevation=89.0, distance=0.1, lookat=[0.0, 0.6, 2.5])
    with MetaWorldEnv("reach-v3", camera="zoom", zoom=sky, image_size=16) as env:
        with pytest.raises(RuntimeError, match="blank frame"):
            env.reset(seed=0)


def test_bad_settings():
    with pytest.raises(ValueError, match="sim.camera"):
        MetaWorldEnv("reach-v3", camera="topview")
    with pytest.raises(ValueError, match="even"):
        MetaWorldEnv("reach-v3", image_size=63)
    with pytest.raises(KeyError, match="reach-v9"):
        MetaWorldEnv("reach-v9")


def test_expert_succeeds_and_step_cap():
    with MetaWorldEnv("reach-v3", camera="zoom", image_size=32, max_steps=120) as env:
        expert = ScriptedExpert("reach-v3")
        _, obs = env.reset(seed=3)
        solved = done = False
        while not (solved or done):
            _, obs, solved, done = env.step(expert.act(obs))
        assert solved and env.steps < 120
    with MetaWorldEnv("reach-v3", camera="zoom", image_size=16, max_steps=5) as env:
        env.reset(seed=0)
        flags = [env.step(np.zeros(4))[3] for _ in range(5)]
        assert flags == [False, False, False, False, True]
        with pytest.raises(ValueError, match="4 values"):
            env.step(np.zeros(3))


def test_a_process_that_renders_can_load_torch_compilers_afterwards():
    """triton (torch's compiler back end, imported lazily by exporters) must load after rendering."""
    pytest.importorskip("triton")
    code = (
        "from lapa.sim.env import MetaWorldEnv\n"
        "env = MetaWorldEnv('reach-v3', seed=0, image_size=32)\n"
        "env.reset()\n"
        "import triton\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
