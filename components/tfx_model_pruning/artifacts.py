"""Custom artifact types.

A type name must be ``namespace.Name`` (KFP v2's schema-title rule) and, because TFX's Kubeflow
container entrypoint imports a custom type by its title, also an importable path: hence
``tfx_model_pruning.PruningReport``, re-exported by the package root.
"""

from tfx.types.artifact import Artifact


class PruningReport(Artifact):
    """What a pruning step did: ``report.json`` (machine-readable) and ``summary.md`` (``artifact_files``)."""

    TYPE_NAME = "tfx_model_pruning.PruningReport"
    # Names this type had in earlier releases. ML Metadata stores keep them, and TFX's cache
    # hands an old run's artifact to a new run unchanged, so readers accept these too.
    LEGACY_TYPE_NAMES = ("components.PruningReport",)
