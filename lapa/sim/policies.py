"""Reference policies for the simulator: Meta-World's scripted experts and a constant action.

Both follow the policy interface evaluation uses, ``predict(image_uint8_hwc, instruction) ->
action``. The expert also reads the simulator state, so it declares ``needs_state = True`` and
takes ``state=`` (a learned policy sees only the image). They bound what a learned policy can
score: the expert from above, a motionless arm from below.
"""

from __future__ import annotations

import warnings

import numpy as np

from lapa.sim.env import ACTION_DIM
from lapa.sim.instructions import task_for


class ScriptedExpert:
    """Meta-World's hand-written controller for one task; actions clipped to [-1, 1]."""

    def __init__(self, task: str) -> None:
        from metaworld.policies import ENV_POLICY_MAP

        if task not in ENV_POLICY_MAP:
            raise ValueError(f"no scripted expert for Meta-World task {task!r}")
        self.task = task
        self._policy = ENV_POLICY_MAP[task]()

    def act(self, obs: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():  # the experts saturate on purpose; we clip like the env does
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", category=UserWarning)
            action = np.asarray(self._policy.get_action(obs), dtype=np.float32)
        return np.clip(action, -1.0, 1.0)


class ExpertPolicy:
    """The scripted experts behind the policy interface, picking the expert by instruction."""

    needs_state = True

    def __init__(self) -> None:
        self._experts: dict[str, ScriptedExpert] = {}

    def predict(self, image: np.ndarray, instruction: str, *, state: np.ndarray) -> np.ndarray:
        task = task_for(instruction)
        if task not in self._experts:
            self._experts[task] = ScriptedExpert(task)
        return self._experts[task].act(state)


class ConstantPolicy:
    """Always the same action (default: zero, an arm that never moves)."""

    def __init__(self, action: np.ndarray | None = None) -> None:
        self.action = np.zeros(ACTION_DIM, np.float32) if action is None else np.asarray(action, np.float32)

    def predict(self, image: np.ndarray, instruction: str) -> np.ndarray:
        return self.action.copy()
