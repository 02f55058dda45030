"""Stage 0: sources (videos, image folders, LeRobot datasets, simulator rollouts) into shards, and loaders.

- ``images``: the one image module (any image to uint8 RGB, one resampler, orientation);
- ``video``: PyAV decoding by presentation time; ``sources``: discovering and streaming inputs;
- ``lerobot``: the LeRobot v3 ``reader`` and ``writer``;
- ``samples``: pairs, demonstrations, keys and splits; ``build``: sources into shard directories
  (streamed, resumable by chunk);
- ``shards``: the one shard writer (``ShardDirBuilder``); ``shard_reader``: the one reader API;
- ``pipeline``: the WebDataset loaders; ``transforms``: normalisation and augmentation;
- ``action_codec``: bins continuous actions for every stage that needs it.

Heavy modules (torch, pandas) are imported inside the submodules that need them.
"""
