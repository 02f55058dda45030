"""One Meta-World task as an image-in, action-out environment: create, seed, reset, render, step.

Used both to record expert rollouts and to evaluate policies, so the images a policy sees in
evaluation come from exactly the renderer its training data came from.

Why not gymnasium's own reset/render: ``reset(seed=...)`` is ignored by Meta-World (layouts only
vary once the per-task random vector is unfrozen and drawn from a reseeded generator), and the
gymnasium renderer keeps shadows and 4x anti-aliasing (~5 frames/s) and gave black frames for a
second environment in the same process. We drive the unwrapped environment and render with our
own ``mujoco.Renderer`` with shadows and reflections off (~10x faster).

At 64 px a frame's cost is the Sawyer's meshes (~67k triangles, ~3/4 of a frame under Mesa's
software rasteriser), not its pixels, so each frame leaves out the geoms that lie wholly outside
the camera's view volume (``cull_offscreen``): they would produce no fragment, so the frame is
bitwise the same.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
import zlib
from typing import Any

import numpy as np

from lapa.config.sim import ZoomCameraConfig
from lapa.sim.instructions import instruction_for

logging.getLogger("OpenGL").setLevel(logging.WARNING)  # PyOpenGL announces optional modules at INFO

CAMERAS = ("zoom", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")
# Cameras whose frame is defined with the image "up" axis pointing down in the Meta-World XML.
_UPSIDE_DOWN = {"corner", "corner2", "corner3", "corner4"}
ACTION_DIM = 4


def prepare_headless_rendering() -> None:
    """Choose headless EGL rendering (unless ``MUJOCO_GL`` is set) before MuJoCo is first imported.

    Also loads triton first when it is installed (torch's CUDA builds ship it, and torch's
    compilers and exporters import it lazily): triton loaded after MuJoCo's EGL context exists
    kills the process with a segmentation fault, so a process that renders and later exports or
    compiles a model would crash. Loading it before the context is made avoids that.
    """
    os.environ.setdefault("MUJOCO_GL", "egl")
    with contextlib.suppress(ImportError):
        import triton  # noqa: F401


def layout_seed(task: str, seed: int) -> int:
    """The generator seed for ``seed`` of ``task``: tasks that share a reset space get
    different layouts for the same episode seed, while a seed range stays a seed range."""
    state = np.random.SeedSequence([int(seed), zlib.crc32(task.encode())]).generate_state(1)
    return int(state[0])


def _find_wrapper(env: Any, method: str) -> Any | None:
    while env is not None:
        if hasattr(type(env), method):
            return env
        env = getattr(env, "env", None)
    return None


class OffscreenCull:
    """Which geoms lie wholly outside a perspective camera's view volume, so need not be drawn.

    A geom is left out when the eight corners of its axis-aligned bounding box (``geom_aabb``,
    in the geom's frame) all lie beyond one plane of the view volume (left, right, bottom, top,
    near) by more than ``margin`` metres (far above the float32 rounding of the GL transforms);
    MuJoCo's box bounds a mesh's vertices and a primitive's tessellation, so such a geom cannot put
    a fragment on the image, and with shadows and reflections off nothing else depends on it:
    leaving it out changes no pixel. Only opaque geoms are candidates (transparent ones are depth-sorted among
    themselves); planes and height fields never are. The far plane is not used.
    """

    def __init__(self, model: Any, margin: float = 1e-4) -> None:
        import mujoco

        rgba = np.array(model.geom_rgba, dtype=np.float64)
        matid = np.asarray(model.geom_matid)
        default = np.all(rgba == np.array([0.5, 0.5, 0.5, 1.0]), axis=1)
        # mjv_addGeoms' colour rule: the material's rgba unless the geom's own differs from default
        use_mat = (matid >= 0) & default
        mat_alpha = np.append(np.asarray(model.mat_rgba, dtype=np.float64)[:, 3], 1.0)  # [-1]: none
        alpha = np.where(use_mat, mat_alpha[matid], rgba[:, 3])
        kind = np.asarray(model.geom_type)
        unbounded = (kind == mujoco.mjtGeom.mjGEOM_PLANE) | (kind == mujoco.mjtGeom.mjGEOM_HFIELD)
        self.ids = np.flatnonzero((alpha == 1.0) & ~unbounded)
        aabb = np.asarray(model.geom_aabb, dtype=np.float64)[self.ids]  # [G, 6]: centre, half-size
        signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
        self._corners = aabb[:, None, :3] + signs[None] * aabb[:, None, 3:]  # [G, 8, 3], geom frame
        self.margin = float(margin)

    def hidden(self, data: Any, camera: Any, aspect: float) -> np.ndarray:
        """Geom ids (int64 [K]) wholly outside the view of ``camera`` (an ``MjvGLCamera``, as
        ``mjr_render`` averages it) for a viewport of width/height ``aspect``; none when the
        camera is orthographic."""
        if camera.orthographic or len(self.ids) == 0:
            return np.zeros(0, dtype=np.int64)
        pos = np.asarray(data.geom_xpos)[self.ids]  # [G, 3]
        rot = np.asarray(data.geom_xmat)[self.ids].reshape(-1, 3, 3)
        world = pos[:, None, :] + self._corners @ rot.transpose(0, 2, 1)  # [G, 8, 3]
        fwd, up = np.asarray(camera.forward, np.float64), np.asarray(camera.up, np.float64)
        axes = np.stack([np.cross(fwd, up), up, fwd])  # camera right, up, forward
        x, y, z = np.moveaxis((world - np.asarray(camera.pos, np.float64)) @ axes.T, -1, 0)  # [G, 8]
        near, top, bottom = (
            float(camera.frustum_near),
            float(camera.frustum_top),
            float(camera.frustum_bottom),
        )
        half = float(camera.frustum_width) or 0.5 * aspect * (top - bottom)
        left, right = float(camera.frustum_center) - half, float(camera.frustum_center) + half
        m = self.margin
        # a point is inside when left*z <= x*near <= right*z, bottom*z <= y*near <= top*z, z >= near
        outside = (
            np.all(x * near - left * z < -m * near, axis=1)
            | np.all(x * near - right * z > m * near, axis=1)
            | np.all(y * near - bottom * z < -m * near, axis=1)
            | np.all(y * near - top * z > m * near, axis=1)
            | np.all(z < near - m, axis=1)
        )
        return self.ids[outside]


class MetaWorldEnv:
    """A seeded Meta-World task rendering square RGB frames from one camera.

    ``reset() -> (image, obs)``; ``step(action) -> (image, obs, success, done)`` where ``done``
    means the step cap was reached. ``obs`` is Meta-World's 39-D state (what scripted experts
    read); ``image`` is uint8 [H, W, 3], upright. ``cull_offscreen`` leaves out of each frame the
    geoms wholly outside the camera's view (``OffscreenCull``; the same pixels, drawn faster).
    """

    def __init__(
        self,
        task: str,
        seed: int = 0,
        camera: str = "zoom",
        image_size: int = 64,
        max_steps: int = 150,
        zoom: ZoomCameraConfig | Any | None = None,
        cull_offscreen: bool = True,
    ) -> None:
        import gymnasium as gym

        prepare_headless_rendering()
        import metaworld  # noqa: F401  (registers the Meta-World/* environments)
        import mujoco

        if camera not in CAMERAS:
            raise ValueError(f"sim.camera: unknown camera {camera!r} (choose from {', '.join(CAMERAS)})")
        if image_size <= 0 or image_size % 2:
            raise ValueError(f"sim.image_size must be a positive even number, got {image_size}")
        if max_steps <= 0:
            raise ValueError(f"sim.max_steps must be positive, got {max_steps}")
        self.instruction = instruction_for(task)
        self.task, self.seed, self.camera, self.image_size, self.max_steps = (
            task,
            int(seed),
            camera,
            int(image_size),
            int(max_steps),
        )
        try:
            with warnings.catch_warnings():  # gymnasium's checker dislikes Meta-World's fixed obs bounds
                warnings.simplefilter("ignore", UserWarning)
                self._gym_env = gym.make("Meta-World/MT1", env_name=task, seed=int(seed))
                self._gym_env.reset()  # lets the task wrapper set a task (full observability, goal in obs)
        except Exception as exc:
            raise ValueError(f"sim.tasks: cannot create Meta-World task {task!r}: {exc}") from exc
        sampler = _find_wrapper(self._gym_env, "toggle_sample_tasks_on_reset")
        if sampler is not None:
            sampler.toggle_sample_tasks_on_reset(False)
        env = self._gym_env.unwrapped
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env.max_path_length = max(int(env.max_path_length), self.max_steps)
        self._env = env
        self.fps = float(round(1.0 / env.dt, 6))

        model = env.model
        model.vis.quality.shadowsize = 0
        model.vis.quality.offsamples = 0
        try:
            self._renderer = mujoco.Renderer(model, self.image_size, self.image_size)
        except Exception as exc:
            backend = os.environ.get("MUJOCO_GL")
            raise RuntimeError(
                f"cannot create an offscreen MuJoCo renderer (MUJOCO_GL={backend}): {exc}. "
                "Set MUJOCO_GL=egl (or osmesa) before mujoco is first imported."
            ) from exc
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        if camera == "zoom":
            z = zoom if zoom is not None else ZoomCameraConfig()
            cam = mujoco.MjvCamera()
            cam.type = mujoco.mjtCamera.mjCAMERA_FREE
            cam.azimuth, cam.elevation, cam.distance = float(z.azimuth), float(z.elevation), float(z.distance)
            cam.lookat[:] = np.asarray(list(z.lookat), dtype=np.float64)
            model.vis.global_.fovy = float(z.fovy)
        else:
            cam = mujoco.MjvCamera()
            cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
            cam.fixedcamid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
            if cam.fixedcamid < 0:
                raise ValueError(f"sim.camera: {task} has no camera {camera!r}")
        self._camera: Any = cam
        self._cull = OffscreenCull(model) if cull_offscreen else None
        self._steps = 0

    # -- episode ---------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Start an episode whose object/goal layout is a function of (task, seed) only."""
        if seed is not None:
            self.seed = int(seed)
        self._env.seed(layout_seed(self.task, self.seed))
        obs, _ = self._env.reset()
        self._steps = 0
        image = self.render()
        if int(image.max()) - int(image.min()) < 8:
            raise RuntimeError(
                f"{self.task}: rendered a blank frame from camera {self.camera!r} "
                f"(MUJOCO_GL={os.environ.get('MUJOCO_GL')}); check the OpenGL backend (egl or osmesa)"
            )
        return image, np.asarray(obs, dtype=np.float64)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, bool]:
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"{self.task}: actions must have {ACTION_DIM} values, got shape {action.shape}")
        if not np.isfinite(action).all():
            raise ValueError(f"{self.task}: non-finite action {action.tolist()}")
        obs, _reward, _terminated, _truncated, info = self._env.step(np.clip(action, -1.0, 1.0))
        self._steps += 1
        success = bool(info.get("success", 0.0))
        done = self._steps >= self.max_steps
        return self.render(), np.asarray(obs, dtype=np.float64), success, done

    def render(self) -> np.ndarray:
        """The current frame, uint8 [H, W, 3], upright."""
        import mujoco

        model, data, scene = self._env.model, self._env.data, self._renderer.scene
        hidden = np.zeros(0, dtype=np.int64)
        if self._cull is not None:
            mujoco.mjv_updateCamera(model, data, self._camera, scene)
            glcam = mujoco.mjv_averageCamera(scene.camera[0], scene.camera[1])  # what mjr_render uses
            hidden = self._cull.hidden(data, glcam, self._renderer.width / self._renderer.height)
        if len(hidden):
            alpha = model.geom_rgba[hidden, 3].copy()
            model.geom_rgba[hidden, 3] = 0.0  # mjv_updateScene skips geoms of alpha 0
            try:
                self._renderer.update_scene(data, camera=self._camera)
            finally:
                model.geom_rgba[hidden, 3] = alpha
        else:
            self._renderer.update_scene(data, camera=self._camera)
        image = self._renderer.render()
        if self.camera in _UPSIDE_DOWN:
            image = image[::-1, ::-1]
        return np.ascontiguousarray(image)

    @property
    def layout(self) -> np.ndarray:
        """The object/goal random vector of the current episode (what a seed controls)."""
        return np.array(self._env._last_rand_vec, dtype=np.float64)

    @property
    def steps(self) -> int:
        return self._steps

    def close(self) -> None:
        if getattr(self, "_renderer", None) is not None:
            self._renderer.close()
            self._renderer = None
        if getattr(self, "_gym_env", None) is not None:
            self._gym_env.close()
            self._gym_env = None

    def __enter__(self) -> MetaWorldEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown may have torn down EGL already
            pass
