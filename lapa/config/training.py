"""The optimiser and trainer vocabulary every training stage shares.

``laq.training``, ``foundation.training`` and ``finetune.training`` are subclasses of
``TrainingConfig``: the same key means the same thing in each (with stage defaults), and each
adds only what is its own (batch sizes, validation extras, export choice). A run's identity
(``lapa.utils.run``) covers every key here except those in ``NOT_IN_IDENTITY``. What each key
allows is declared in its metadata (``lapa.config.checks``); a subclass changing a default keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lapa.config.checks import CHECK, above, at_least, in_range, one_of, satisfies

STRATEGIES = ("auto", "single", "ddp", "fsdp2")
ACCELERATORS = ("auto", "cpu", "cuda", "gpu")  # gpu is an alias of cuda
# auto, or a precision Lightning Fabric accepts (its full names and their short aliases)
PRECISIONS = (
    "auto",
    "32-true",
    "bf16-mixed",
    "16-mixed",
    "bf16-true",
    "16-true",
    "64-true",
    "transformer-engine",
    "transformer-engine-float16",
    "32",
    "bf16",
    "16",
    "64",
)

# Keys that never change the weights a run produces: changing them resumes the same run.
# max_steps: a run may be extended (its checkpoints are resumable below the new limit).
NOT_IN_IDENTITY = ("max_steps", "stop_after_steps", "keep_last", "cpu_threads")


def not_in_identity(section: str) -> list[str]:
    """Dotted keys of the ``TrainingConfig`` at ``section`` left out of a run's identity."""
    return [f"{section}.{key}" for key in NOT_IN_IDENTITY]


_BETA = in_range(0, 1, high_open=True)[CHECK]
BETAS = satisfies(lambda v: len(v) == 2 and all(_BETA.test(b) for b in v), "two numbers in [0, 1)")


@dataclass
class TrainingConfig:
    """Shared training settings; units are optimizer steps unless a name says otherwise."""

    # optimizer steps; a checkpoint past it is never resumed
    max_steps: int = field(default=10_000, metadata=at_least(1))
    lr: float = field(default=1e-4, metadata=above(0))  # peak learning rate (after warmup)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata=BETAS)  # AdamW
    eps: float = field(default=1e-8, metadata=above(0))  # AdamW
    # on weight matrices only (not norms, biases, embeddings, queries)
    weight_decay: float = field(default=0.0, metadata=at_least(0))
    # linear warmup, then cosine decay to min_lr at max_steps
    warmup_steps: int = field(default=0, metadata=at_least(0))
    min_lr: float = field(default=0.0, metadata=at_least(0))
    gradient_clip: float = field(default=1.0, metadata=at_least(0))  # max global gradient norm; 0: off
    # auto: bf16-mixed on CUDA, 32-true on CPU; or a Lightning precision string
    precision: str = field(default="auto", metadata=one_of(*PRECISIONS))
    seed: int | None = field(default=None, metadata=at_least(0))  # None: the experiment seed
    accelerator: str = field(default="auto", metadata=one_of(*ACCELERATORS))
    # auto (ddp if several processes, else single) | single | ddp | fsdp2
    strategy: str = field(default="auto", metadata=one_of(*STRATEGIES))
    devices: int = field(default=1, metadata=at_least(1))  # processes per node
    num_nodes: int = field(default=1, metadata=at_least(1))
    # torch threads per process on CPU; None: the default split over devices
    cpu_threads: int | None = field(default=None, metadata=at_least(1))
    val_every_steps: int = field(default=1000, metadata=at_least(0))  # 0 disables validation
    # validation samples: null reads the whole val split; N > 0 a sample of N stratified by task and
    # seeded by the run's seed (the same samples at every validation and in every arm); 0 turns it off
    val_samples: int | None = field(default=None, metadata=at_least(0))
    # 0: only at the end (and when stopping early)
    checkpoint_every_steps: int = field(default=1000, metadata=at_least(0))
    keep_last: int = field(
        default=2, metadata=at_least(1)
    )  # resumable checkpoints kept in the work directory
    # leave after this many steps in one run (time-limited jobs)
    stop_after_steps: int | None = field(default=None, metadata=at_least(1))
