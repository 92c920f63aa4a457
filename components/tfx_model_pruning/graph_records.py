"""What the graph scan found, recorded in ML Metadata: on each model a component writes, and as the
result of a component that refused its input.

TFX's launcher records no message for an executor that raises, so the CLI (``failure_line``) and
the Kubeflow UI would show only that the step failed. Returned as the executor's output, the
refusal (which model, which function and op, the opt-in) is the execution's recorded result.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable, Iterable, Optional

from tfx import types
from tfx.proto.orchestration import execution_result_pb2

from tfx_model_pruning.engine.graph_scan import scan_model_dir
from tfx_model_pruning.engine.load_errors import UnsafeModelError


def records_refusals(component: str) -> Callable:
    """Decorates an executor's ``Do``: a model it refuses as unsafe ends the execution with the
    refusal as its recorded result (raised as before where no launcher reads the output).

        @records_refusals("PruneComponent")
        def Do(self, input_dict, output_dict, exec_properties): ...
    """

    def decorate(do: Callable) -> Callable:
        @functools.wraps(do)
        def do_recording_refusals(self, input_dict, output_dict, exec_properties):
            try:
                return do(self, input_dict, output_dict, exec_properties)
            except UnsafeModelError as err:
                recorded = recorded_refusal(self._context, component, err)
                if recorded is None:
                    raise
                return recorded

        return do_recording_refusals

    return decorate


def recorded_refusal(
    context: Any, component: str, err: UnsafeModelError
) -> Optional[execution_result_pb2.ExecutorOutput]:
    """The failed execution's output naming the refusal; None where the launcher reads no output
    (a direct ``Do`` call): the caller raises ``err`` then."""
    if context is None or not getattr(context, "executor_output_uri", None):
        return None
    message = " ".join(f"{component} refused the model: {type(err).__name__}: {err}".split())
    return execution_result_pb2.ExecutorOutput(
        execution_result=execution_result_pb2.ExecutionResult(code=1, result_message=message)
    )


def record_scan(artifact: types.Artifact, model_dir: str, allow_ops: Iterable[str]) -> None:
    """Scans the model a component wrote and records the census on its artifact: ``graph_scan``
    (passed or refused), ``graph_op_types``, ``graph_functions`` and ``graph_allowed_ops``."""
    scan = scan_model_dir(model_dir, allow_ops)
    artifact.set_string_custom_property("graph_scan", "passed" if scan.passed else "refused")
    artifact.set_int_custom_property("graph_op_types", len(scan.ops))
    artifact.set_int_custom_property("graph_functions", scan.functions)
    artifact.set_string_custom_property(
        "graph_allowed_ops", json.dumps(sorted({finding.op for finding in scan.allowed}))
    )
    scan.require_safe()  # what this component wrote must pass what the next one will check
