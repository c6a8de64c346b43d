"""What a model needs to know about its data, fitted on the training split only.

A :class:`DataSpec` travels with the model (it is saved in the checkpoint's hyper-parameters), so
the statistics used at training time are the ones baked into the exported graph: the model's
``forward`` takes raw feature values and normalises / encodes them itself.

The model input is one float32 matrix ``features`` of shape ``(B, F)``, columns in
``DataSpec.feature_names`` order. Numeric columns carry the raw value (``NaN`` for a missing value);
categorical columns carry the category's code from ``FeatureSpec.categories`` (code ``i + 1`` for
``categories[i]``, ``0`` for a category never seen in training). :func:`encode_features` builds that
matrix from a data frame; clients of a served model do the same lookup.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from modelyard.data import Schema

__all__ = ["DataSpec", "FeatureSpec", "encode_features", "encode_labels", "fit_data_spec"]

FeatureKind = Literal["numeric", "categorical"]


@dataclass(frozen=True)
class FeatureSpec:
    """One input column. ``mean``/``std`` for numeric, ``categories`` for categorical columns."""

    name: str
    kind: FeatureKind
    mean: float = 0.0
    std: float = 1.0
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class DataSpec:
    """Inputs, target and fitted statistics of a dataset snapshot.

    Attributes:
        features: one entry per input column, in model-input order.
        label: name of the target column.
        classes: the target's class values as strings; index ``k`` is class ``k`` of the model.
        digest: digest of the snapshot the statistics were fitted on.
        image_shape: ``(H, W)`` when the features are the pixels of a one-channel image.
    """

    features: tuple[FeatureSpec, ...]
    label: str
    classes: tuple[str, ...]
    digest: str = ""
    image_shape: tuple[int, int] | None = None
    input_name: str = "features"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def num_features(self) -> int:
        return len(self.features)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe form (what is stored in checkpoints and manifests)."""
        out = asdict(self)
        out["features"] = [asdict(f) | {"categories": list(f.categories)} for f in self.features]
        out["classes"] = list(self.classes)
        out["image_shape"] = list(self.image_shape) if self.image_shape else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | DataSpec) -> DataSpec:
        if isinstance(data, DataSpec):
            return data
        features = tuple(
            FeatureSpec(**{**f, "categories": tuple(f.get("categories", ()))}) for f in data["features"]
        )
        shape = data.get("image_shape")
        return cls(
            features=features,
            label=data["label"],
            classes=tuple(str(c) for c in data["classes"]),
            digest=data.get("digest", ""),
            image_shape=tuple(shape) if shape else None,
            input_name=data.get("input_name", "features"),
            extra=dict(data.get("extra", {})),
        )


def fit_data_spec(
    train: pd.DataFrame, schema: Schema, *, digest: str = "", image_shape: tuple[int, int] | None = None
) -> DataSpec:
    """Fit normalisation statistics and category vocabularies on the training split.

    Numeric features (``float``/``int``/``bool``) get the training mean and standard deviation
    (``std`` 1.0 for a constant column, so nothing divides by zero). Categorical and string
    features get their sorted training vocabulary. The class list comes from the schema's
    ``allowed`` values when declared, else from the training labels, so a class missing from a
    small split still has an output.

    Raises:
        ValueError: if the label column is not a classification target (``float``).
    """
    features = []
    for col in schema.feature_columns:
        values = train[col.name]
        if col.dtype in ("category", "string"):
            vocab = sorted({str(v) for v in values.dropna()})
            features.append(FeatureSpec(col.name, "categorical", categories=tuple(vocab)))
        else:
            numeric = values.astype("float64")
            mean = float(numeric.mean()) if numeric.notna().any() else 0.0
            std = float(numeric.std(ddof=0)) if numeric.notna().sum() > 1 else 1.0
            if not math.isfinite(std) or std < 1e-12:
                std = 1.0
            features.append(FeatureSpec(col.name, "numeric", mean=mean, std=std))

    label = schema.column(schema.label)
    if label.dtype == "float":
        raise ValueError(
            f"label column {label.name!r} has dtype 'float'; the built-in models are classifiers and "
            "expect an int, bool, category or string label. Bring a regression LightningModule "
            "through `model.class_path` instead."
        )
    if label.allowed:
        classes = tuple(str(c) for c in label.allowed)
    else:
        classes = tuple(str(c) for c in sorted(train[label.name].dropna().unique().tolist()))
    observed = train[label.name].map(str).value_counts()
    counts = {c: int(observed.get(c, 0)) for c in classes}
    return DataSpec(
        features=tuple(features), label=label.name, classes=classes, digest=digest, image_shape=image_shape,
        extra={"class_counts": counts},
    )


def encode_features(frame: pd.DataFrame, spec: DataSpec) -> np.ndarray:
    """Model input matrix ``(N, F)`` float32 from raw rows; see the module docstring."""
    columns = []
    for feat in spec.features:
        values = frame[feat.name]
        if feat.kind == "categorical":
            lookup = {c: i + 1 for i, c in enumerate(feat.categories)}
            codes = values.map(lambda v, lookup=lookup: lookup.get(str(v), 0) if v is not None else 0)
            columns.append(codes.to_numpy(dtype=np.float32))
        else:
            columns.append(values.astype("float64").to_numpy(dtype=np.float32, na_value=np.nan))
    return np.stack(columns, axis=1) if columns else np.zeros((len(frame), 0), np.float32)


def encode_labels(frame: pd.DataFrame, spec: DataSpec) -> np.ndarray:
    """Class indices ``(N,)`` int64; raises ``ValueError`` naming labels outside ``spec.classes``."""
    index = {c: i for i, c in enumerate(spec.classes)}
    raw = frame[spec.label].map(str)
    codes = raw.map(index)
    if codes.isna().any():
        unknown = sorted(set(raw[codes.isna()].tolist()))[:5]
        raise ValueError(
            f"label column {spec.label!r} holds values {unknown} that are not among the classes "
            f"{list(spec.classes)} fitted on the training split"
        )
    return codes.to_numpy(dtype=np.int64)
