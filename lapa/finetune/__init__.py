"""Stage 3: action statistics and finetuning to continuous (binned) robot actions."""
