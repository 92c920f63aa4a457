"""Which Keras class names a configuration may give for a metric or a loss, with a suggestion for a typo.

One rule per kind, used where the name is first validated (``MetricThreshold.metric``,
``FineTuneConfig.loss``) and where it is finally used (the gate's metric names, the loss the
fine-tuning builds), so a name accepted in a pipeline file is a name the run can use.

Example::

    metric_class("BinaryAccuracy")   # the class
    metric_class("binary_accuracy")  # UnknownKerasNameError: ...; did you mean 'BinaryAccuracy'?
"""

from __future__ import annotations

import difflib
import functools
import inspect
from typing import Iterable, Optional

import tf_keras as keras


class UnknownKerasNameError(ValueError):
    """A configuration names a Keras metric or loss class that does not exist or cannot be used."""


def closest_name(name: str, choices: Iterable[str]) -> Optional[str]:
    """The choice ``name`` most likely meant: same letters ignoring case and underscores, else the closest.

    ``binary_accuracy`` -> ``BinaryAccuracy``, ``auc`` -> ``AUC``, ``from_logit`` -> ``from_logits``;
    None when nothing is close.
    """
    choices = list(choices)
    by_key = {_key(choice): choice for choice in choices}
    if _key(name) in by_key:
        return by_key[_key(name)]
    close = difflib.get_close_matches(_key(name), list(by_key), n=1, cutoff=0.6)
    return by_key[close[0]] if close else None


def _key(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def _required_arguments(cls: type) -> list[str]:
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return [
        p.name
        for p in parameters
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "name"
    ]


def _usable_metric(cls) -> bool:
    """A Keras metric the gate can build from its name alone and feed (labels, predictions), as TFMA does."""
    if not (isinstance(cls, type) and issubclass(cls, keras.metrics.Metric)) or inspect.isabstract(cls):
        return False
    # Mean, Sum, MeanTensor take one tensor of values, not labels and predictions.
    return "y_pred" in inspect.signature(cls.update_state).parameters and not _required_arguments(cls)


def _usable_loss(cls) -> bool:
    """A Keras loss class fine-tuning can build from its name (and from_logits) alone."""
    if not (isinstance(cls, type) and issubclass(cls, keras.losses.Loss)):
        return False
    return cls.call is not keras.losses.Loss.call and not _required_arguments(cls)


@functools.cache
def metric_names() -> tuple[str, ...]:
    """Every Keras metric class name a gate threshold may give."""
    return tuple(name for name in dir(keras.metrics) if _usable_metric(getattr(keras.metrics, name)))


@functools.cache
def loss_names() -> tuple[str, ...]:
    """Every Keras loss class name fine-tuning may be given."""
    return tuple(name for name in dir(keras.losses) if _usable_loss(getattr(keras.losses, name)))


def _unknown(what: str, name: str, choices: tuple[str, ...], examples: str) -> UnknownKerasNameError:
    suggestion = closest_name(name, choices)
    hint = f"did you mean {suggestion!r}?" if suggestion else f"e.g. {examples}"
    return UnknownKerasNameError(f"{name!r} is not {what}; {hint}")


def metric_class(name: str) -> type:
    """The Keras metric class ``name`` names.

    Raises:
      UnknownKerasNameError: not such a class (a function such as ``binary_accuracy``, a typo, or a
        class that needs more than a name, e.g. ``MeanIoU``); the message suggests the closest name.
    """
    if name in metric_names():
        return getattr(keras.metrics, name)
    raise _unknown(
        "a Keras metric class name the gate can compute",
        name,
        metric_names(),
        "'SparseCategoricalAccuracy', 'BinaryAccuracy', 'AUC'",
    )


def loss_class(name: str) -> type:
    """The Keras loss class ``name`` names.

    Raises:
      UnknownKerasNameError: not such a class (e.g. the function ``binary_crossentropy``); the
        message suggests the closest name.
    """
    if name in loss_names():
        return getattr(keras.losses, name)
    raise _unknown(
        "a Keras loss class name fine-tuning can build",
        name,
        loss_names(),
        "'SparseCategoricalCrossentropy', 'BinaryCrossentropy'",
    )
