"""One Meta-World task as an image-in, action-out environment: create, seed, reset, render, step.

Used both to record expert rollouts and to evaluate policies, so the images a policy sees in
evaluation come from exactly the renderer its training data came from.

Why not gymnasium's own reset/render: ``reset(seed=...)`` is ignored by Meta-World (layouts only
vary once the per-task random vector is unfrozen and drawn from a reseeded generator), and the
gymnasium renderer keeps shadows and 4x anti-aliasing (~5 frames/s) and gave black frames for a
second environment in the same process. We drive the unwrapped environment and render with our
own ``mujoco.Renderer`` with shadows and reflections off (~10x faster).
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


class MetaWorldEnv:
    """A seeded Meta-World task rendering square RGB frames from one camera.

    ``reset() -> (image, obs)``; ``step(action) -> (image, obs, success, done)`` where ``done``
    means the step cap was reached. ``obs`` is Meta-World's 39-D state (what scripted experts
    read); ``image`` is uint8 [H, W, 3], upright.
    """

    def __init__(
        self,
        task: str,
        seed: int = 0,
        camera: str = "zoom",
        image_size: int = 64,
        max_steps: int = 150,
        zoom: ZoomCameraConfig | Any | None = None,
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
            self._camera: Any = cam
        else:
            self._camera = camera
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
        self._renderer.update_scene(self._env.data, camera=self._camera)
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
