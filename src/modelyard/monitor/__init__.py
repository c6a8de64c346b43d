"""``modelyard monitor``: the inference log and feedback labels, drift tests against the champion's
training profile, live performance, reports and gauges, and the loop that retrains, exports,
canaries and promotes when the policy fires.

* :mod:`~modelyard.monitor.store`: the reader of what the Ray Serve ingress writes (the inference log
  and feedback labels of :mod:`modelyard.inference`, partitioned Parquet).
* :mod:`~modelyard.monitor.drift`, :mod:`~modelyard.monitor.performance`, :mod:`~modelyard.monitor.report`:
  the statistics, the report files and the Prometheus gauges.
* :mod:`~modelyard.monitor.check`, :mod:`~modelyard.monitor.loop`, :mod:`~modelyard.monitor.incidents`:
  one check and its policy, the incidents and the retraining steps, the timeline.
"""

from modelyard.inference.log import InferenceLog
from modelyard.monitor.config import MonitorConfig
from modelyard.monitor.drift import DriftReport, DriftSettings, detect_drift
from modelyard.monitor.loop import Monitor, RetrainPipeline
from modelyard.monitor.store import MonitorStore

__all__ = ["DriftReport", "DriftSettings", "InferenceLog", "Monitor", "MonitorConfig", "MonitorStore",
           "RetrainPipeline", "detect_drift"]
