"""Configuration of Meta-World rollouts and closed-loop evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ZoomCameraConfig:
    """The free camera behind ``camera: zoom``: a closer three-quarter view than ``corner``.

    At 64 px the puck is 1-3 px wide from ``corner``; this view keeps it at 3-4 px while the
    gripper and every task's objects stay in frame.
    """

    azimuth: float = 135.0  # degrees
    elevation: float = -30.0  # degrees, negative looks down
    distance: float = 1.05  # metres from the look-at point
    lookat: list[float] = field(default_factory=lambda: [0.0, 0.65, 0.05])
    fovy: float = 45.0  # vertical field of view, degrees


@dataclass
class SimConfig:
    tasks: list[str] = field(default_factory=lambda: ["reach-v3", "push-v3", "drawer-open-v3"])
    # zoom (the free camera below) or a Meta-World camera: corner, corner2, corner3, corner4,
    # behindGripper, gripperPOV
    camera: str = "zoom"
    zoom: ZoomCameraConfig = field(default_factory=ZoomCameraConfig)
    image_size: int = 64  # rendered frame size (square, even)
    max_steps: int = 150  # episode cap
    steps_after_success: int = 5  # rollouts keep recording this many steps after the first success
    # Exploration noise on the expert's actions, per split (std in action units, temporally
    # correlated). A deterministic expert's next move is predictable from frame t alone, so a
    # latent action model trained on its videos needs no codes; noisy "play" makes motion
    # something only the codes can explain. The recorded ``action`` is the one executed; the
    # expert's own action before noise is recorded beside it as ``action.intended`` (what the
    # action-pretrained arm learns: the executed noise is not predictable from an image).
    pretrain_action_noise: float = 0.0
    demo_action_noise: float = 0.0
    action_noise_correlation: float = 0.8  # AR(1) coefficient of the noise between steps
    # Disjoint seed ranges: pretraining videos, labelled demonstrations, evaluation.
    pretrain_episodes_per_task: int = 4
    demo_episodes_per_task: int = 2
    eval_episodes_per_task: int = 4
    pretrain_seed: int = 0
    demo_seed: int = 100_000
    eval_seed: int = 200_000
    workers: int = 2  # processes rendering rollouts
    # Dataset videos store the rendered frames exactly (RGB H.264 at qp 0, about 3x the bytes of
    # crf 10), so training frames and the frames evaluation renders differ only by the shards' JPEG.
    # false: x264 at video_crf in 4:2:0 (lower is better; crf 10 is off by ~2.7 grey levels at 64 px).
    video_lossless: bool = True
    video_crf: int = 10
    # What a policy sees in closed-loop evaluation: "shards" passes each rendered frame through the
    # shards' own path (resize and crop to data.sharding, then a JPEG round trip at
    # data.sharding.jpeg_quality), so it matches its training frames pixel for pixel; "raw" gives
    # the render as it is (it then differs from training frames by the JPEG error, ~1.7 grey
    # levels at 64 px and quality 95).
    eval_observation: str = "shards"
    save_videos: int = 2  # rollout videos kept per task during evaluation
