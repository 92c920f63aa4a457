"""AtomicPusher: the stock TFX Pusher with versions published atomically."""

from __future__ import annotations

from typing import Any, Optional

from tfx.components import Pusher
from tfx.dsl.components.base import executor_spec

from tfx_model_pruning import standard_component_specs as specs
from tfx_model_pruning.atomic_pusher import executor


class AtomicPusher(Pusher):
    """The stock ``Pusher`` (same inputs, outputs and blessing check) publishing atomically.

    On a local or mounted filesystem each pushed version is staged in a hidden directory and
    renamed into place, so it appears complete or not at all, never overwrites a version, and
    concurrent runs get distinct versions. At push time it refuses a destination that resolves
    outside ``push_root`` and a verdict judged against a model that no longer is the one
    serving; it records, rather than duplicates, a version that already holds the model. Other
    destinations use the stock behaviour.

    Usage::

        pusher = AtomicPusher(
            model=retrain.outputs["model"],
            model_blessing=gate.outputs["blessing"],
            push_destination=tfx.proto.PushDestination(
                filesystem=tfx.proto.PushDestination.Filesystem(base_directory="/serving/penguin")
            ),
            push_root="/serving",
        )
    """

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, *args: Any, push_root: Optional[str] = None, custom_config: Optional[dict] = None, **kwargs):
        if push_root is not None:
            custom_config = {**(custom_config or {}), specs.PUSH_ROOT_KEY: push_root}
        super().__init__(*args, custom_config=custom_config, **kwargs)
