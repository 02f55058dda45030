"""LeRobot v3.0 datasets: the reader and the writer."""

from lapa.data.lerobot.writer import (
    CODEBASE_VERSION,
    dataset_summary,
    load_info,
    read_lerobot_dataset,
    write_lerobot_dataset,
)

__all__ = [
    "CODEBASE_VERSION",
    "dataset_summary",
    "load_info",
    "read_lerobot_dataset",
    "write_lerobot_dataset",
]
