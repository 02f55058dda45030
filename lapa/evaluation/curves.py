"""Loss curves of training runs, drawn from their CSV metric logs.

A run's logs are CSV files (Lightning's CSV loggers, one row per logging event) with a ``step``
column (optimizer steps) and one or more columns with ``loss`` in their name; every such column
becomes a line of loss against step. A run may have several files (a resumed run writes a
second one); each is drawn, labelled by its folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def loss_tables(source: str | Path) -> list[tuple[Path, object, list[str]]]:
    """The CSV logs of a run: ``source`` is one CSV file or a folder searched recursively.

    Returns ``(path, DataFrame, loss columns)`` per file that has a ``step`` column and at least
    one loss column, sorted by path; other CSV files are passed over. Raises
    ``FileNotFoundError`` if ``source`` does not exist and ``ValueError`` naming the file if a
    CSV cannot be parsed or its step or a loss column holds text that is not a number (a
    half-written or corrupted log is reported, not drawn or skipped silently).
    """
    import pandas as pd

    source = Path(source)
    if source.is_file():
        paths = [source]
    elif source.is_dir():
        paths = sorted(source.rglob("*.csv"))
    else:
        raise FileNotFoundError(f"training log not found: {source}")
    tables = []
    for path in paths:
        try:
            frame = pd.read_csv(path)
        except Exception as exc:
            raise ValueError(f"cannot read CSV log {path}: {exc}") from exc
        losses = [c for c in frame.columns if "loss" in str(c).lower()]
        if "step" in frame.columns and losses:
            for column in ["step", *losses]:  # empty cells are NaN; anything else must be a number
                values = pd.to_numeric(frame[column], errors="coerce")
                bad = frame[column][values.isna() & frame[column].notna()]
                if len(bad):
                    raise ValueError(
                        f"{path}: column {column!r} holds {len(bad)} value(s) that are not numbers "
                        f"(first {bad.iloc[0]!r}, row {int(bad.index[0]) + 2} of the file)"
                    )
            tables.append((path, frame, losses))
    return tables


def plot_loss_curves(runs: Mapping[str, str | Path], out_dir: str | Path) -> list[Path]:
    """One PNG per run (``out_dir/<name>.png``, 600x350 px): every loss column against step.

    ``runs`` maps a figure name to the run's CSV file or log folder. ``out_dir`` appears
    atomically, with every figure or none. Raises ``FileNotFoundError`` for a missing log and
    ``ValueError`` for a run without any CSV holding ``step`` and a loss column.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lapa.utils.io import atomic_directory

    tables = {}
    for name, source in runs.items():
        found = loss_tables(source)
        if not found:
            raise ValueError(f"no CSV log with 'step' and a loss column under {source} (run {name!r})")
        tables[name] = found
    written = []
    with atomic_directory(out_dir) as tmp:
        for name, found in tables.items():
            fig, ax = plt.subplots(figsize=(6, 3.5))
            for path, frame, losses in found:
                for column in losses:
                    series = frame[["step", column]].dropna()
                    if len(series):
                        label = column if len(found) == 1 else f"{path.parent.name}/{column}"
                        ax.plot(
                            series["step"],
                            series[column],
                            marker="." if len(series) < 30 else None,
                            label=label,
                        )
            ax.set_xlabel("step")
            ax.set_ylabel("loss")
            ax.set_title(name)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(tmp / f"{name}.png", dpi=100)
            plt.close(fig)
            written.append(Path(out_dir) / f"{name}.png")
    return written
