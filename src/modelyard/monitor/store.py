"""The monitor's reader of the inference log and feedback labels (layout in :mod:`modelyard.inference.store`).

:class:`MonitorStore` runs in any process (the monitor, a rollout) and tolerates part files that
retention deletes under it; :class:`RolloutLabels` is the rollout's view of its labelled predictions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modelyard.inference.store import (
    FEEDBACK_COLUMNS,
    INFERENCE_COLUMNS,
    PartFile,
    feedback_schema,
    inference_schema,
    list_parts,
    model_root,
    read_part,
    utc_day,
)

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = ["FEEDBACK_COLUMNS", "INFERENCE_COLUMNS", "MonitorStore", "RolloutLabels"]

logger = logging.getLogger(__name__)


def _read(parts: Sequence[PartFile], columns: Sequence[str], schema: pa.Schema) -> pa.Table:
    """Concatenated ``columns`` of ``parts``; files deleted meanwhile (retention) are skipped."""
    import pyarrow as pa

    tables = []
    for part in parts:
        try:
            tables.append(read_part(part, columns, schema))
        except FileNotFoundError:
            continue
    if not tables:
        return pa.schema([schema.field(c) for c in columns]).empty_table()
    return pa.concat_tables(tables)


class MonitorStore:
    """Reads the inference log and feedback labels of ``model`` under ``root``.

    Args:
        root: the inference log root (``log_dir`` of ``modelyard serve ray``): a local folder or a
            ``s3://``/``gs://`` URI (:mod:`modelyard.storage`).
        model: served model name.
        classes: class names in output order, so that labels given as names map to class indices;
            without them only integer-like labels map.
    """

    def __init__(self, root: str | Path, model: str, classes: Sequence[str] | None = None) -> None:
        folder = model_root(root, model, "inference log folder")
        self.root, self.model = root, model
        self.classes = list(classes) if classes is not None else None
        self.inference_dir = folder / "inferences"
        self.feedback_dir = folder / "feedback"

    def inferences(self, since: float | None = None, until: float | None = None, last_rows: int | None = None,
                   versions: Sequence[str] | None = None) -> pd.DataFrame:
        """Logged rows with ``since <= ts < until`` of ``versions``, sorted by ``ts``; ``last_rows``: the newest N.

        Columns as stored (:data:`INFERENCE_COLUMNS`); ``features``/``outputs`` cells are float32 arrays,
        ``embedding`` cells float16 arrays (empty when the row has none; None in files written before the
        column existed).
        """
        import pyarrow.compute as pc

        if last_rows is not None and last_rows < 0:
            raise ValueError(f"last_rows must be >= 0 or None, got {last_rows}")
        parts = self._candidates(since, until)
        schema = inference_schema()

        def select(table: pa.Table) -> pa.Table:
            mask = None
            for cond in ((pc.greater_equal(table["ts"], since) if since is not None else None),
                         (pc.less(table["ts"], until) if until is not None else None),
                         (pc.is_in(table["version"], value_set=_pa_strings(versions)) if versions is not None
                          else None)):
                if cond is not None:
                    mask = cond if mask is None else pc.and_(mask, cond)
            return table if mask is None else table.filter(mask)

        if last_rows is None:
            table = select(_read(parts, INFERENCE_COLUMNS, schema))
        else:
            table = select(self._newest(parts, last_rows, schema, select))
        frame = table.sort_by("ts").to_pandas()
        return frame if last_rows is None else frame.tail(last_rows).reset_index(drop=True)

    def _candidates(self, since: float | None, until: float | None) -> list[PartFile]:
        parts = list_parts(self.inference_dir)
        if since is not None:  # a file holds no row later than when it was written, none outside its day
            parts = [p for p in parts if p.written_ms / 1000 >= since and p.day >= utc_day(since)]
        if until is not None:
            parts = [p for p in parts if p.day <= utc_day(until)]
        return parts

    @staticmethod
    def _newest(parts: list[PartFile], n: int, schema: pa.Schema,
                select: Callable[[pa.Table], pa.Table]) -> pa.Table:
        """Read files newest first until no older file can hold one of the ``n`` most recent rows."""
        import pyarrow as pa
        import pyarrow.compute as pc

        tables, ts = [], np.empty(0)
        for part in reversed(parts):
            # Every row of this file (and of older ones) is at or before its write time.
            if n == 0 or (len(ts) >= n and part.written_ms / 1000 < ts[-n]):
                break
            table = select(_read([part], INFERENCE_COLUMNS, schema))
            tables.append(table)
            ts = np.sort(np.concatenate([ts, pc.cast(table["ts"], pa.float64()).to_numpy()]))
        return pa.concat_tables(tables) if tables else schema.empty_table()

    @staticmethod
    def features_matrix(frame: pd.DataFrame) -> np.ndarray:
        """The ``features`` column as an ``(N, F)`` float32 matrix.

        Raises:
            ValueError: rows of different widths (the served signature changed within ``frame``).
        """
        if len(frame) == 0:
            return np.zeros((0, 0), dtype=np.float32)
        widths = {len(v) for v in frame["features"]}
        if len(widths) != 1:
            raise ValueError(f"feature rows of widths {sorted(widths)} received; expected one width "
                             "(select one model signature, e.g. with versions=)")
        return np.stack(frame["features"].to_numpy()).astype(np.float32, copy=False)  # (N, F)

    @staticmethod
    def embeddings_matrix(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """``(matrix (M, D) float32, has (N,) bool)``: the logged embeddings of the rows of ``frame`` that
        have one (``has``), in frame order; ``(0, 0)`` when none has.

        Raises:
            ValueError: embeddings of different widths (the served model changed within ``frame``).
        """
        if len(frame) == 0 or "embedding" not in frame.columns:
            return np.zeros((0, 0), dtype=np.float32), np.zeros(len(frame), dtype=bool)
        has = np.array([v is not None and len(v) > 0 for v in frame["embedding"]], dtype=bool)
        if not has.any():
            return np.zeros((0, 0), dtype=np.float32), has
        cells = frame["embedding"].to_numpy()[has]
        widths = {len(v) for v in cells}
        if len(widths) != 1:
            raise ValueError(f"embeddings of widths {sorted(widths)} received; expected one width "
                             "(select one model version, e.g. with versions=)")
        return np.stack(cells).astype(np.float32), has  # (M, D)

    def feedback(self) -> pd.DataFrame:
        """Every stored label (columns :data:`FEEDBACK_COLUMNS`), oldest first; the first label of a row wins."""
        frame = _read(list_parts(self.feedback_dir), FEEDBACK_COLUMNS, feedback_schema()).sort_by("ts").to_pandas()
        return frame.drop_duplicates(["request_id", "row"], keep="first").reset_index(drop=True)

    def labelled(self, since: float | None = None, until: float | None = None,
                 versions: Sequence[str] | None = None) -> pd.DataFrame:
        """Logged rows that have a label: the inference columns plus ``label``, ``label_ts`` and ``label_index``.

        Labels that map to no class (see ``classes``) are excluded with a warning and counted in
        ``frame.attrs["unmappable_labels"]``.
        """
        labels = self.feedback().rename(columns={"ts": "label_ts"})
        frame = self.inferences(since, until, versions=versions).merge(labels, on=["request_id", "row"], how="inner")
        index = np.array([self._class_index(label, len(out)) for label, out in zip(frame["label"], frame["outputs"])],
                         dtype=np.int64)
        bad = index < 0
        if bad.any():
            examples = sorted(set(frame.loc[bad, "label"]))[:5]
            expected = (f"one of {self.classes} or an integer in [0, {len(self.classes)})" if self.classes
                        else "an integer class index within the model's outputs")
            logger.warning("%d labels map to no class and are left out (e.g. %s); expected %s",
                           int(bad.sum()), examples, expected)
        frame = frame.assign(label_index=index)[~bad].sort_values("ts").reset_index(drop=True)
        frame.attrs["unmappable_labels"] = int(bad.sum())
        return frame

    def _class_index(self, label: str, n_outputs: int) -> int:
        """Class index of ``label``, -1 when it maps to none."""
        if self.classes is not None and label in self.classes:
            return self.classes.index(label)
        try:
            value = int(label)
        except ValueError:
            return -1
        limit = len(self.classes) if self.classes is not None else n_outputs
        return value if 0 <= value < limit else -1

    def accuracy(self, version: str, since: float | None = None) -> tuple[int, int] | None:
        """``(correct, total)`` over labelled rows of ``version``, ``None`` without any (a rollout ``LabelSource``)."""
        frame = self.labelled(since, versions=[version])
        if len(frame) == 0:
            return None
        return int((frame["predicted"].to_numpy() == frame["label_index"].to_numpy()).sum()), len(frame)


class RolloutLabels:
    """The rollout's :class:`~modelyard.rollout.traffic.LabelSource`: labelled predictions per version
    from rows answered after ``since`` (the rollout's start), so stable and canary are compared on the
    same period's traffic."""

    def __init__(self, store: MonitorStore, since: float | None = None) -> None:
        self.store, self.since = store, since

    def labelled(self, version: str) -> tuple[np.ndarray, np.ndarray] | None:
        frame = self.store.labelled(self.since, versions=[version])
        if not len(frame):
            return None
        return frame["label_index"].to_numpy(dtype=np.int64), frame["predicted"].to_numpy(dtype=np.int64)


def _pa_strings(values: Sequence[str]) -> pa.Array:
    import pyarrow as pa

    return pa.array([str(v) for v in values], type=pa.string())

