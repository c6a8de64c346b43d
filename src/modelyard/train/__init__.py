"""Training: Lightning jobs from YAML configs, tracked as one MLflow run each.

``run(TrainConfig) -> TrainResult``; ``parse_train_config(argv)`` builds the config the way
``modelyard train`` does.
"""

from modelyard.train.config import (
                                    CheckpointConfig,
                                    DataModuleConfig,
                                    MlflowConfig,
                                    ModelConfig,
                                    TrainConfig,
                                    parse_train_config,
)
from modelyard.train.run import TrainResult, run

__all__ = ["CheckpointConfig", "DataModuleConfig", "MlflowConfig", "ModelConfig", "TrainConfig", "TrainResult",
           "parse_train_config", "run"]
