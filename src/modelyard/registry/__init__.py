"""MLflow Model Registry: versions with model cards, audited ``champion``/``challenger`` aliases."""

from modelyard.registry.card import model_card
from modelyard.registry.register import register_onnx, version_tags
from modelyard.registry.store import ALIASES, AliasMove, PromotionRefused, history, model_version_info, set_alias

__all__ = ["ALIASES", "AliasMove", "PromotionRefused", "history", "model_card", "model_version_info", "register_onnx",
           "set_alias", "version_tags"]
