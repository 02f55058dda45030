"""Shared helpers below every stage: atomic writes (``io``), the learning-rate schedule and the
optimiser (``schedule``, ``optim``), and the run toolkit of the training loops (``run``: identity,
run folders, loggers, precision, data position, requeue; ``checkpoint``: resumable checkpoints)."""
