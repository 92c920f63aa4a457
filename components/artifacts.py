"""Custom artifact types.

A type name must be ``namespace.Name`` (KFP v2's schema-title rule) and, because TFX's Kubeflow
container entrypoint imports a custom type by its title, also an importable path: hence
``components.PruningReport``, re-exported by the ``components`` package.
"""

from tfx.types.artifact import Artifact


class PruningReport(Artifact):
    """What a pruning step did: ``report.json`` (machine-readable) and ``summary.md`` (``artifact_files``)."""

    TYPE_NAME = "components.PruningReport"
