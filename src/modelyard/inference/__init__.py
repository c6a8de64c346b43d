"""The inference log and feedback labels: written by serving, read by the monitor and the rollout.

A shared layer below ``serve`` and ``monitor`` (it imports no stage):

* :mod:`~modelyard.inference.store`: the on-disk layout (partitioned Parquet part files, schemas).
* :mod:`~modelyard.inference.log`: :class:`~modelyard.inference.log.InferenceLog`, the sampled request log.
* :mod:`~modelyard.inference.journal`: the log's per-replica local journal, so a killed replica loses no row.
* :mod:`~modelyard.inference.feedback`: :class:`~modelyard.inference.feedback.FeedbackLog`, ground-truth labels.

Nothing heavy is imported here: pyarrow loads when a file is written or read.
"""

__all__: list[str] = []
