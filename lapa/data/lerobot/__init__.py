"""LeRobot v3.0 datasets: the layout (``format``), the reader and the writer."""

from lapa.data.lerobot.format import CODEBASE_VERSION, load_info
from lapa.data.lerobot.reader import LeRobotDataset, dataset_summary, read_lerobot_dataset
from lapa.data.lerobot.writer import write_lerobot_dataset

__all__ = [
    "CODEBASE_VERSION",
    "LeRobotDataset",
    "dataset_summary",
    "load_info",
    "read_lerobot_dataset",
    "write_lerobot_dataset",
]
