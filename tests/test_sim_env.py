"""The Meta-World environment wrapper: seeded layouts, upright non-blank frames, expert success, and
frames drawn without the geoms outside the view bitwise equal to frames drawn with every geom."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("metaworld", reason="needs the 'sim' extra (metaworld)")

from lapa.config.sim import ZoomCameraConfig  # noqa: E402
from lapa.sim.env import MetaWorldEnv, OffscreenCull  # noqa: E402
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


def test_an_unknown_task_is_a_one_line_command_error(tmp_path):
    """`lapa rollouts` with a task Meta-World does not have exits 1 naming the key and the task."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "lapa", "rollouts", "--split", "demos", "--out", str(tmp_path / "r")]
        + ["-c", "tiny", "sim.tasks=[nosuch-v3]"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr
    assert "sim.tasks: no Meta-World task 'nosuch-v3'; known: " in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


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


def test_offscreen_cull_leaves_out_only_geoms_beyond_a_plane_of_the_view():
    import mujoco

    xml = """<mujoco><worldbody>
      <camera name="eye" pos="0 0 0" fovy="60"/>
      <geom name="ahead" type="box" size=".1 .1 .1" pos="0 0 -2"/>
      <geom name="behind" type="sphere" size=".1" pos="0 0 2"/>
      <geom name="left" type="box" size=".1 .1 .1" pos="-3 0 -2"/>
      <geom name="above" type="capsule" size=".1 .2" pos="0 3 -2"/>
      <geom name="edge" type="box" size=".5 .1 .1" pos="1.5 0 -2"/>
      <geom name="tilted" type="box" size="2 .05 .05" pos="2.5 0 -2" euler="0 0 0"/>
      <geom name="clear" type="box" size=".1 .1 .1" pos="0 0 -3" rgba="1 0 0 .5"/>
      <geom name="floor" type="plane" size="1 1 .1" pos="0 0 5"/>
    </worldbody></mujoco>"""
    model = mujoco.MjModel.from_xml_string(xml)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    scene = mujoco.MjvScene(model, maxgeom=100)
    cam = mujoco.MjvCamera()
    cam.type, cam.fixedcamid = mujoco.mjtCamera.mjCAMERA_FIXED, 0
    mujoco.mjv_updateCamera(model, data, cam, scene)
    view = mujoco.mjv_averageCamera(scene.camera[0], scene.camera[1])
    cull = OffscreenCull(model)

    def names(ids):
        return {mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, int(i)) for i in ids}

    # the half-transparent box and the plane are never candidates; at 2 m the view is 2.3 m wide,
    # so "edge" (x 1.0..2.0) and the long "tilted" bar (x 0.5..4.5) reach into it
    assert names(cull.ids) == {"ahead", "behind", "left", "above", "edge", "tilted"}
    assert names(cull.hidden(data, view, aspect=1.0)) == {"behind", "left", "above"}
    # a viewport four times as wide as high sees "left" (x -3 at 2 m is within 4 x 1.15 m)
    assert names(cull.hidden(data, view, aspect=4.0)) == {"behind", "above"}
    # turned about its centre, the bar leaves the view
    model.geom_quat[model.geom("tilted").id] = [np.cos(np.pi / 4), 0, np.sin(np.pi / 4), 0]
    mujoco.mj_forward(model, data)
    model.geom_pos[model.geom("tilted").id] = [3.5, 0, -2]
    mujoco.mj_forward(model, data)
    assert names(cull.hidden(data, view, aspect=1.0)) == {"behind", "left", "above", "tilted"}


@pytest.mark.parametrize(
    "task, camera, policy",
    [
        ("reach-v3", "zoom", "expert"),
        ("window-open-v3", "gripperPOV", "random"),
        ("push-v3", "corner", "random"),
    ],
)
def test_culled_frames_and_episodes_equal_full_ones(task, camera, policy):
    """Stepping one env that draws every geom and one that leaves out the geoms outside the view
    with the same actions gives bitwise equal frames, equal states, success flags and step counts."""
    kwargs = {"camera": camera, "image_size": 64, "max_steps": 60}
    with (
        MetaWorldEnv(task, cull_offscreen=False, **kwargs) as full,
        MetaWorldEnv(task, cull_offscreen=True, **kwargs) as culled,
    ):
        rgba = culled._env.model.geom_rgba.copy()
        expert, rng = ScriptedExpert(task), np.random.default_rng(0)
        left_out, successes = [], 0
        for seed in (3, 4):
            image_a, obs_a = full.reset(seed=seed)
            image_b, obs_b = culled.reset(seed=seed)
            np.testing.assert_array_equal(image_a, image_b)
            done = success = False
            while not (done or success):
                action = expert.act(obs_a) if policy == "expert" else rng.uniform(-1, 1, 4)
                image_a, obs_a, success, done = full.step(action)
                image_b, obs_b, success_b, done_b = culled.step(action)
                np.testing.assert_array_equal(image_a, image_b)
                np.testing.assert_array_equal(obs_a, obs_b)
                assert (success, done) == (success_b, done_b)
                left_out.append(full._renderer.scene.ngeom - culled._renderer.scene.ngeom)
            assert full.steps == culled.steps
            successes += success
        assert min(left_out) > 0, "no frame left a geom out: the comparison shows nothing"
        assert policy != "expert" or successes > 0  # a success step is among those compared
        np.testing.assert_array_equal(culled._env.model.geom_rgba, rgba)  # the model is as it was


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
