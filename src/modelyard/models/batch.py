"""The batch convention every stage relies on, in one place.

A batch is ``(inputs, target)``. ``inputs`` is one tensor, a tuple of tensors (``forward``'s
positional parameters) or a dict of named tensors (``forward``'s keyword parameters). A model's
``forward`` returns one tensor, a tuple or a dict of tensors. Training steps, the export parity
gate, the reference profile and signature inference all take samples and outputs apart with these
functions, so a datamodule that follows the convention works everywhere; one with another layout
names a function (``data.batch_adapter``) that turns its batch into ``(inputs, target)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["call_model", "input_names", "named_inputs", "named_outputs", "split_batch"]


def split_batch(batch: Any, adapter: Callable[[Any], tuple[Any, Any]] | None = None) -> tuple[Any, Any]:
    """``(inputs, target)`` of a batch; ``adapter`` first when the datamodule has its own layout."""
    if adapter is not None:
        batch = adapter(batch)
    if isinstance(batch, Mapping) or not isinstance(batch, Sequence) or len(batch) != 2:
        raise ValueError(f"a batch must be (inputs, target); got {type(batch).__name__}"
                         + (f" of length {len(batch)}" if isinstance(batch, Sequence) else "")
                         + ". Name a function that takes your batch apart in `data.batch_adapter`")
    return batch[0], batch[1]


def call_model(model: torch.nn.Module, inputs: Any) -> Any:
    """``model(inputs)``, ``model(*inputs)`` or ``model(**inputs)`` as the inputs' form says."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def input_names(model: torch.nn.Module, inputs: Any) -> list[str]:
    """Names of the inputs: the dict's keys, else ``forward``'s parameter names in order."""
    if isinstance(inputs, Mapping):
        return list(inputs)
    params = [p.name for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    count = len(inputs) if isinstance(inputs, tuple | list) else 1
    if len(params) < count:
        raise ValueError(f"{type(model).__name__}.forward takes {len(params)} positional inputs, the batch has {count}")
    return params[:count]


def named_inputs(model: torch.nn.Module, inputs: Any) -> dict[str, Any]:
    """``{name: tensor}`` of a batch's inputs (see :func:`input_names`)."""
    if isinstance(inputs, Mapping):
        return dict(inputs)
    values = list(inputs) if isinstance(inputs, tuple | list) else [inputs]
    return dict(zip(input_names(model, inputs), values))


def named_outputs(outputs: Any, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` of a model's outputs: a dict as it is; a tensor is ``logits`` (or
    ``names[0]``); a tuple's items are ``names`` or ``output_0``, ``output_1``..."""
    if isinstance(outputs, Mapping):
        return dict(outputs)
    if isinstance(outputs, torch.Tensor):
        return {names[0] if names else "logits": outputs}
    items = list(outputs)
    if names and len(names) != len(items):
        raise ValueError(f"the model returned {len(items)} outputs, the names given are {list(names)}")
    return dict(zip(names or [f"output_{i}" for i in range(len(items))], items))
