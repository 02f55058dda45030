"""Stage 3: finetuning the policy network (``lapa.policy``) to binned robot actions."""
