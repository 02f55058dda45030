"""Stage 0: sources (videos, image folders, LeRobot datasets, simulator rollouts) into shards, and loaders.

Heavy modules (torch, lightning) are imported from their submodules: ``lapa.data.pipeline``,
``lapa.data.shards``, ``lapa.data.transforms``; ``lapa.data.action_codec`` bins continuous
actions for every stage that needs it.
"""
