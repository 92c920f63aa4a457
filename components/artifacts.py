"""Custom artifact types. Names are ``namespace.Name``, the form KFP v2 requires."""

from tfx.types.artifact import Artifact


class PruningReport(Artifact):
    """What a pruning step did: ``report.json`` (machine-readable) and ``summary.md``."""

    TYPE_NAME = "pruning.PruningReport"


REPORT_JSON = "report.json"
SUMMARY_MARKDOWN = "summary.md"
