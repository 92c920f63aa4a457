"""AtomicPusher: the stock TFX Pusher with versions published atomically."""

from tfx import v1 as tfx
from tfx.dsl.components.base import executor_spec

from components.atomic_pusher import executor


class AtomicPusher(tfx.components.Pusher):
    """The stock ``Pusher`` (same inputs, outputs and blessing check) publishing atomically.

    On a local or mounted filesystem each pushed version is staged in a hidden directory and
    renamed into place, so it appears complete or not at all, never overwrites a version, and
    concurrent runs get distinct versions. Other destinations use the stock behaviour.

    Usage::

        pusher = AtomicPusher(
            model=retrain.outputs["model"],
            model_blessing=gate.outputs["blessing"],
            push_destination=tfx.proto.PushDestination(
                filesystem=tfx.proto.PushDestination.Filesystem(base_directory="/serving/penguin")
            ),
        )
    """

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)
