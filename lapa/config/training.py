"""The optimiser and trainer vocabulary every training stage shares.

``laq.training``, ``foundation.training`` and ``finetune.training`` are subclasses of
``TrainingConfig``: the same key means the same thing in each (with stage defaults), and each
adds only what is its own (batch sizes, validation extras, export choice). A run's identity
(``lapa.utils.run``) covers every key here except those in ``NOT_IN_IDENTITY``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STRATEGIES = ("auto", "single", "ddp", "fsdp2")

# Keys that never change the weights a run produces: changing them resumes the same run.
# max_steps: a run may be extended (its checkpoints are resumable below the new limit).
NOT_IN_IDENTITY = ("max_steps", "stop_after_steps", "keep_last", "cpu_threads")


def not_in_identity(section: str) -> list[str]:
    """Dotted keys of the ``TrainingConfig`` at ``section`` left out of a run's identity."""
    return [f"{section}.{key}" for key in NOT_IN_IDENTITY]


@dataclass
class TrainingConfig:
    """Shared training settings; units are optimizer steps unless a name says otherwise."""

    max_steps: int = 10_000  # optimizer steps; a checkpoint past it is never resumed
    lr: float = 1e-4  # peak learning rate (after warmup)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW
    eps: float = 1e-8  # AdamW
    weight_decay: float = 0.0  # on weight matrices only (not norms, biases, embeddings, queries)
    warmup_steps: int = 0  # linear warmup, then cosine decay to min_lr at max_steps
    min_lr: float = 0.0
    gradient_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    precision: str = "auto"  # auto: bf16-mixed on CUDA, 32-true on CPU; or a Lightning precision string
    seed: int | None = None  # None: the experiment seed
    accelerator: str = "auto"  # auto | cpu | cuda (gpu is accepted as cuda)
    strategy: str = "auto"  # auto (ddp if several processes, else single) | single | ddp | fsdp2
    devices: int = 1  # processes per node
    num_nodes: int = 1
    cpu_threads: int | None = None  # torch threads per process on CPU; None: the default split over devices
    val_every_steps: int = 1000  # 0 disables validation
    # validation samples: null reads the whole val split; N > 0 a sample of N stratified by task and
    # seeded by the run's seed (the same samples at every validation and in every arm); 0 turns it off
    val_samples: int | None = None
    checkpoint_every_steps: int = 1000  # 0: only at the end (and when stopping early)
    keep_last: int = 2  # resumable checkpoints kept in the work directory
    stop_after_steps: int | None = None  # leave after this many steps in one run (time-limited jobs)
