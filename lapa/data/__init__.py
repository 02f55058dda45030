"""Stage 0: sources (videos, image folders, LeRobot datasets, simulator rollouts) into shards, and loaders."""
