"""Configuration of Meta-World rollouts and closed-loop evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field

from lapa.config.checks import above, at_least, in_range, one_of, satisfies

# zoom (the free camera below) or a Meta-World camera (lapa.sim.env.CAMERAS)
CAMERAS = ("zoom", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")
EVAL_OBSERVATIONS = ("shards", "raw")


@dataclass
class ZoomCameraConfig:
    """The free camera behind ``camera: zoom``: a closer three-quarter view than ``corner``.

    At 64 px the puck is 1-3 px wide from ``corner``; this view keeps it at 3-4 px while the
    gripper and every task's objects stay in frame.
    """

    azimuth: float = 135.0  # degrees
    elevation: float = field(default=-30.0, metadata=in_range(-90, 90))  # degrees, negative looks down
    distance: float = field(default=1.05, metadata=above(0))  # metres from the look-at point
    lookat: list[float] = field(
        default_factory=lambda: [0.0, 0.65, 0.05],
        metadata=satisfies(lambda v: len(v) == 3, "three coordinates [x, y, z]"),
    )
    # vertical field of view, degrees
    fovy: float = field(default=45.0, metadata=in_range(0, 180, low_open=True, high_open=True))


@dataclass
class SimConfig:
    tasks: list[str] = field(
        default_factory=lambda: ["reach-v3", "push-v3", "drawer-open-v3"],
        metadata=satisfies(lambda v: len(v) > 0, "a non-empty list of Meta-World task names"),
    )
    # zoom (the free camera below) or a Meta-World camera: corner, corner2, corner3, corner4,
    # behindGripper, gripperPOV
    camera: str = field(default="zoom", metadata=one_of(*CAMERAS))
    zoom: ZoomCameraConfig = field(default_factory=ZoomCameraConfig)
    image_size: int = field(  # rendered frame size (square, even)
        default=64, metadata=satisfies(lambda v: v > 0 and v % 2 == 0, "a positive even integer")
    )
    max_steps: int = field(default=150, metadata=at_least(1))  # episode cap
    # rollouts keep recording this many steps after the first success
    steps_after_success: int = field(default=5, metadata=at_least(0))
    # Exploration noise on the expert's actions, per split (std in action units, temporally
    # correlated). A deterministic expert's next move is predictable from frame t alone, so a
    # latent action model trained on its videos needs no codes; noisy "play" makes motion
    # something only the codes can explain. The recorded ``action`` is the one executed; the
    # expert's own action before noise is recorded beside it as ``action.intended`` (what the
    # action-pretrained arm learns: the executed noise is not predictable from an image).
    pretrain_action_noise: float = field(default=0.0, metadata=at_least(0))
    demo_action_noise: float = field(default=0.0, metadata=at_least(0))
    # AR(1) coefficient of the noise between steps
    action_noise_correlation: float = field(default=0.8, metadata=in_range(0, 1, high_open=True))
    # Disjoint seed ranges: pretraining videos, labelled demonstrations, evaluation.
    pretrain_episodes_per_task: int = field(default=4, metadata=at_least(0))
    demo_episodes_per_task: int = field(default=2, metadata=at_least(0))
    eval_episodes_per_task: int = field(default=4, metadata=at_least(1))
    pretrain_seed: int = field(default=0, metadata=at_least(0))
    demo_seed: int = field(default=100_000, metadata=at_least(0))
    eval_seed: int = field(default=200_000, metadata=at_least(0))
    workers: int = field(default=2, metadata=at_least(1))  # processes rendering rollouts (1: in-process)
    # Dataset videos store the rendered frames exactly (RGB H.264 at qp 0, about 3x the bytes of
    # crf 10), so training frames and the frames evaluation renders differ only by the shards' JPEG.
    # false: x264 at video_crf in 4:2:0 (lower is better; crf 10 is off by ~2.7 grey levels at 64 px).
    video_lossless: bool = True
    video_crf: int = field(default=10, metadata=in_range(0, 51))
    # What a policy sees in closed-loop evaluation: "shards" passes each rendered frame through the
    # shards' own path (resize and crop to data.sharding, then a JPEG round trip at
    # data.sharding.jpeg_quality), so it matches its training frames pixel for pixel; "raw" gives
    # the render as it is (it then differs from training frames by the JPEG error, ~1.7 grey
    # levels at 64 px and quality 95).
    eval_observation: str = field(default="shards", metadata=one_of(*EVAL_OBSERVATIONS))
    save_videos: int = field(
        default=2, metadata=at_least(0)
    )  # rollout videos kept per task during evaluation
