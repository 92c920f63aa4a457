"""A model is a program: its graphs are read, before anything loads it, for ops that act on the machine.

Loading a SavedModel runs some of its functions (variable restore, table initializers), and
evaluating it runs its signatures, so a graph that reads or writes files, calls back into Python
or talks to the network does so on the machine that prunes, fine-tunes or gates it. The scan
reads ``saved_model.pb`` as a protobuf (nothing is restored, no op runs) and walks every graph
in it: each meta graph, its function library (so every signature, every nested function and
every ``tf.function`` the object graph keeps) and every node's function attributes. It starts
from ``saved_model_cli scan``'s deny-list (``ReadFile``, ``WriteFile``, ``PrintV2``) and counts
ops the way TensorFlow does (``meta_graph.ops_used_by_graph_def``); ``REFUSED_OPS`` is the one
table of what else it refuses and why. Three kinds of op are refused only where they are not
what a SavedModel needs:

- checkpoint ops (``SaveV2``, ``RestoreV2``, ``MergeV2Checkpoints``, ...) outside the functions
  the SavedModel's saver reaches and nothing else does: a serving function that saves is refused;
- table initializers from text files whose file name is not one of the model's own assets;
- ``PrintV2`` that prints to a file, ``DecodeProtoV2``/``EncodeProto`` whose descriptors come from
  a file.

Ops TensorFlow does not know (a custom kernel library) are refused too. The model directory is
walked as well: a symbolic link that leaves it, a hard link, a device or a pipe, and an asset
whose name is absolute or climbs out with ``..`` are refused whatever ``allow_ops`` says.

    scan = scan_model_dir("gs://bucket/model/Format-Serving")
    scan.require_safe()  # UnsafeGraphError naming the function and op, and the opt-in
"""

from __future__ import annotations

import os
import posixpath
import stat
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Optional

import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow.python.framework import meta_graph, op_def_registry

from tfx_model_pruning.engine.load_errors import ModelLoadError, UnsafeModelError

FILE_IO = "file I/O"
PYTHON = "Python callback"
PROCESS = "process control"
NETWORK = "network"
DEBUG_OUTPUT = "debug output"
CHECKPOINT = "checkpoint I/O"
TABLE_FILE = "table from a file"

# saved_model_cli scan's default deny-list (tensorflow/python/tools/saved_model_cli.py), which this
# table extends; tests/test_graph_scan.py checks the table still covers it.
SAVED_MODEL_CLI_DENYLIST = frozenset({"WriteFile", "ReadFile", "PrintV2"})

# The one table: op -> (category, why it is refused). Checkpoint and table-file ops are allowed
# where the SavedModel format itself needs them (see the module docstring).
REFUSED_OPS: Mapping[str, tuple[str, str]] = {
    **{
        op: (FILE_IO, why)
        for op, why in {
            "ReadFile": "reads any file",
            "WriteFile": "writes any file",
            "MatchingFiles": "lists files matching a pattern",
            "ImmutableConst": "memory-maps a file",
            "WholeFileReader": "reads whole files",
            "WholeFileReaderV2": "reads whole files",
            "TextLineReader": "reads text files",
            "TextLineReaderV2": "reads text files",
            "TFRecordReader": "reads TFRecord files",
            "TFRecordReaderV2": "reads TFRecord files",
            "FixedLengthRecordReader": "reads files",
            "FixedLengthRecordReaderV2": "reads files",
            "IdentityReader": "a file-queue reader",
            "IdentityReaderV2": "a file-queue reader",
            "LMDBReader": "reads LMDB files",
            "TFRecordDataset": "reads TFRecord files",
            "TFRecordDatasetV2": "reads TFRecord files",
            "TextLineDataset": "reads text files",
            "FixedLengthRecordDataset": "reads files",
            "FixedLengthRecordDatasetV2": "reads files",
            "LMDBDataset": "reads LMDB files",
            "ExperimentalLMDBDataset": "reads LMDB files",
            "CSVDataset": "reads CSV files",
            "CSVDatasetV2": "reads CSV files",
            "ExperimentalCSVDataset": "reads CSV files",
            "SqlDataset": "queries an SQL database",
            "ExperimentalSqlDataset": "queries an SQL database",
            "LoadDataset": "reads a saved dataset from files",
            "ExperimentalLoadDataset": "reads a saved dataset from files",
            "SaveDataset": "writes a dataset to files",
            "SaveDatasetV2": "writes a dataset to files",
            "DatasetToTFRecord": "writes a TFRecord file",
            "ExperimentalDatasetToTFRecord": "writes a TFRecord file",
            "SnapshotDataset": "writes and reads dataset snapshots in files",
            "SnapshotDatasetV2": "writes and reads dataset snapshots in files",
            "SnapshotDatasetReader": "reads dataset snapshots from files",
            "SnapshotChunkDataset": "reads dataset snapshots from files",
            "CacheDataset": "caches a dataset in files",
            "CacheDatasetV2": "caches a dataset in files",
            "LoadAndRemapMatrix": "reads a checkpoint file",
            "GenerateVocabRemapping": "reads vocabulary files",
            "CreateSummaryFileWriter": "writes event files",
            "CreateSummaryDbWriter": "writes an SQLite database",
            "WriteSummary": "writes event files",
            "WriteScalarSummary": "writes event files",
            "WriteHistogramSummary": "writes event files",
            "WriteImageSummary": "writes event files",
            "WriteAudioSummary": "writes event files",
            "WriteGraphSummary": "writes event files",
            "WriteRawProtoSummary": "writes event files",
            "ImportEvent": "writes event files",
            "SummaryWriter": "a summary writer (event files)",
            "FlushSummaryWriter": "writes event files",
            "CloseSummaryWriter": "writes event files",
            "PrintV2": "prints to a file (output_stream='file://...')",
            "DecodeProtoV2": "reads protobuf descriptors from a file (descriptor_source)",
            "EncodeProto": "reads protobuf descriptors from a file (descriptor_source)",
        }.items()
    },
    "PyFunc": (PYTHON, "runs a Python function of the process that loaded it (tf.py_function / tf.numpy_function)"),
    "PyFuncStateless": (PYTHON, "runs a Python function of the process that loaded it (tf.numpy_function)"),
    "EagerPyFunc": (PYTHON, "runs a Python function of the process that loaded it (tf.py_function)"),
    "Abort": (PROCESS, "ends the process that runs it"),
    **{
        op: (NETWORK, why)
        for op, why in {
            "RemoteCall": "runs a function on another machine",
            "DataServiceDataset": "reads from a tf.data service over the network",
            "DataServiceDatasetV2": "reads from a tf.data service over the network",
            "DataServiceDatasetV3": "reads from a tf.data service over the network",
            "DataServiceDatasetV4": "reads from a tf.data service over the network",
            "RegisterDataset": "registers with a tf.data service over the network",
            "RegisterDatasetV2": "registers with a tf.data service over the network",
            "DistributedSave": "writes a dataset through a tf.data service",
            "CollectiveReduce": "exchanges tensors with other workers",
            "CollectiveReduceV2": "exchanges tensors with other workers",
            "CollectiveReduceV3": "exchanges tensors with other workers",
            "CollectiveGather": "exchanges tensors with other workers",
            "CollectiveGatherV2": "exchanges tensors with other workers",
            "CollectiveBcastSend": "sends tensors to other workers",
            "CollectiveBcastSendV2": "sends tensors to other workers",
            "CollectiveBcastRecv": "receives tensors from other workers",
            "CollectiveBcastRecvV2": "receives tensors from other workers",
            "CollectiveAllToAllV2": "exchanges tensors with other workers",
            "CollectiveAllToAllV3": "exchanges tensors with other workers",
            "CollectiveReduceScatterV2": "exchanges tensors with other workers",
            "CollectiveInitializeCommunicator": "connects to other workers",
            "_Send": "sends tensors to another device or task",
            "_Recv": "receives tensors from another device or task",
            "_HostSend": "sends tensors to another device or task",
            "_HostRecv": "receives tensors from another device or task",
        }.items()
    },
    **{
        op: (DEBUG_OUTPUT, "writes tensors to its debug_urls (files or gRPC)")
        for op in (
            "DebugIdentity",
            "DebugIdentityV2",
            "DebugIdentityV3",
            "DebugNanCount",
            "DebugNumericSummary",
            "DebugNumericSummaryV2",
        )
    },
    **{
        op: (CHECKPOINT, "reads or writes checkpoint files; a SavedModel's saver is the only place for it")
        for op in ("Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice", "MergeV2Checkpoints")
    },
    **{
        op: (TABLE_FILE, "fills a lookup table from a file that is not one of the model's assets")
        for op in ("InitializeTableFromTextFile", "InitializeTableFromTextFileV2")
    },
}
# Filename inputs of the table initializers (their second input).
_TABLE_FILENAME_INPUT = 1
# Ops a tensor passes through unchanged, when tracing where a file name comes from (a TF2
# SavedModel's graph keeps an asset's path in a variable and reads it for the initializer).
_PASS_THROUGH = frozenset({"Identity", "Snapshot", "StopGradient", "ReadVariableOp"})
# Where PrintV2 writes when it does not write to a file.
_VARIABLE_OPS = frozenset({"VarHandleOp", "VariableV2", "Variable"})
_ASSIGN_OPS = frozenset({"AssignVariableOp", "Assign"})
_PRINT_STREAMS = frozenset({"stderr", "stdout", "log(info)", "log(warning)", "log(error)"})
_CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})
GRAPH = "<graph>"  # the function name of a meta graph's own nodes


class UnsafeGraphError(UnsafeModelError):
    """A model's graph holds ops that act on the machine that loads or runs it, or its files
    reach outside its directory."""


@dataclass(frozen=True)
class Finding:
    """One refused node, or one refused file: where, what, why."""

    function: str  # the function holding the node, GRAPH for a meta graph's own nodes, "" for a file
    node: str
    op: str  # "" for a file
    reason: str

    def __str__(self) -> str:
        if not self.op:
            return f"{self.node}: {self.reason}"
        where = "the graph" if self.function == GRAPH else f"function {self.function!r}"
        return f"op {self.op} (node {self.node!r} in {where}): {self.reason}"


@dataclass
class GraphScan:
    """What one model directory's graphs hold: the op census, what was refused and what was allowed."""

    model_dir: str
    ops: dict[str, int] = field(default_factory=dict)  # op type -> nodes of it, over every graph and function
    functions: int = 0
    meta_graphs: int = 0
    findings: list[Finding] = field(default_factory=list)  # refused
    allowed: list[Finding] = field(default_factory=list)  # would be refused, but named in allow_ops
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.findings

    def require_safe(self) -> None:
        """Raises UnsafeGraphError naming every finding and how to allow the ops that may be allowed."""
        if self.passed:
            return
        ops = sorted({finding.op for finding in self.findings if finding.op})
        listed = "; ".join(str(finding) for finding in self.findings[:20])
        more = f" (and {len(self.findings) - 20} more)" if len(self.findings) > 20 else ""
        opt_in = (
            f" Refused before any of it ran. Only for a model you trust: security.allow_ops: [{', '.join(ops)}] "
            "in the pipeline file (--allow-op on the command line, allow_ops= in Python)."
            if ops
            else " Refused before any of it ran; files must be plain files inside the model directory."
        )
        raise UnsafeGraphError(
            f"{self.model_dir!r} holds what acts on the machine that loads it: {listed}{more}.{opt_in}"
        )

    def summary(self) -> dict:
        """The census as JSON: recorded on artifacts (MLMD) and in the release report."""
        return {
            "passed": self.passed,
            "ops": dict(sorted(self.ops.items())),
            "functions": self.functions,
            "meta_graphs": self.meta_graphs,
            "refused": [str(finding) for finding in self.findings],
            "allowed": [str(finding) for finding in self.allowed],
            "seconds": round(self.seconds, 4),
        }


def scan_model_dir(model_dir: str, allow_ops: Iterable[str] = ()) -> GraphScan:
    """Scans a model directory's files and, if it has one, its ``saved_model.pb``; nothing is loaded.

    Raises:
      ModelLoadError: ``saved_model.pb`` is there but is not a readable SavedModel.
    """
    started = time.perf_counter()
    allowed_ops = frozenset(allow_ops)
    scan = GraphScan(model_dir=model_dir)
    findings = list(_file_findings(model_dir))
    saved_model = _read_saved_model(model_dir)
    if saved_model is not None:
        scan.meta_graphs = len(saved_model.meta_graphs)
        for graph in saved_model.meta_graphs:
            scan.functions += len(graph.graph_def.library.function)
            for op in meta_graph.ops_used_by_graph_def(graph.graph_def):
                scan.ops.setdefault(op, 0)
            for _, node in _all_nodes(graph):
                if node.op in scan.ops:
                    scan.ops[node.op] += 1
            findings.extend(_MetaGraphScan(graph).findings())
    for finding in dict.fromkeys(findings):
        (scan.allowed if finding.op and finding.op in allowed_ops else scan.findings).append(finding)
    scan.seconds = time.perf_counter() - started
    return scan


def introduced_ops(candidate: GraphScan, parent: GraphScan, allow_ops: Iterable[str] = ()) -> list[str]:
    """Op types the candidate's graphs hold that the parent's did not, less those allowed."""
    return sorted(set(candidate.ops) - set(parent.ops) - set(allow_ops))


def allow_ops_problem(names: Iterable[str]) -> Optional[str]:
    """Why ``names`` cannot be ``allow_ops``: the names that are neither ops TensorFlow (or a loaded
    kernel library) registers nor in ``REFUSED_OPS``; None when every name is an op type."""
    unknown = [name for name in names if name not in REFUSED_OPS and op_def_registry.get(name) is None]
    if not unknown:
        return None
    return (
        f"{', '.join(map(repr, unknown))}: not an op type TensorFlow registers (CamelCase, as a refusal "
        "names it: PrintV2, ReadFile; a custom op's library is loaded by module_file)"
    )


def _read_saved_model(model_dir: str) -> Optional[saved_model_pb2.SavedModel]:
    path = os.path.join(model_dir, "saved_model.pb")
    if not tf.io.gfile.exists(path):
        return None
    saved_model = saved_model_pb2.SavedModel()
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            saved_model.ParseFromString(f.read())
    except Exception as err:  # DecodeError, or a read error of the file system
        raise ModelLoadError(
            f"could not load the SavedModel in {model_dir!r}: saved_model.pb is unreadable: {err}"
        ) from err
    return saved_model


def _file_findings(model_dir: str) -> Iterator[Finding]:
    """Links and special files in a local model directory (object stores have neither)."""
    if "://" in model_dir or not os.path.isdir(model_dir):
        return
    root = os.path.realpath(model_dir)
    for directory, dirs, files in os.walk(model_dir, followlinks=False):
        for name in sorted(dirs + files):
            path = os.path.join(directory, name)
            shown = os.path.relpath(path, model_dir)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                target = os.path.realpath(path)
                if os.path.commonpath([root, target]) != root:
                    yield Finding("", shown, "", f"a symbolic link to {target}, outside the model directory")
            elif stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                yield Finding(
                    "", shown, "", f"a hard link ({info.st_nlink} names for one file): copy the file into the model"
                )
            elif not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                yield Finding("", shown, "", "not a plain file or directory (a device, pipe or socket)")


def _all_nodes(graph: meta_graph_pb2.MetaGraphDef) -> Iterator[tuple[str, tf.compat.v1.NodeDef]]:
    for node in graph.graph_def.node:
        yield GRAPH, node
    for function in graph.graph_def.library.function:
        for node in function.node_def:
            yield function.signature.name, node


def _called_functions(node, library: Mapping[str, object]) -> list[str]:
    called = [node.op] if node.op in library else []
    for value in node.attr.values():
        kind = value.WhichOneof("value")
        if kind == "func":
            called.append(value.func.name)
        elif kind == "list" and value.list.func:
            called.extend(function.name for function in value.list.func)
    return called


def _string_attr(node, name: str) -> str:
    return node.attr[name].s.decode("utf-8", "replace") if name in node.attr else ""


def _node_name(reference: str) -> str:
    """The node a graph input names: ``^a``, ``a:1`` and ``a`` are all node ``a``."""
    return reference.lstrip("^").split(":")[0]


def _asset_name_problem(name: str) -> Optional[str]:
    if not name:
        return "an asset with no file name"
    if name.startswith(("/", "\\")) or "://" in name or (len(name) > 1 and name[1] == ":"):
        return f"asset file name {name!r} is absolute: assets are read from the model's assets/ directory"
    if ".." in posixpath.normpath(name.replace("\\", "/")).split("/"):
        return f"asset file name {name!r} climbs out of the model's assets/ directory"
    return None


class _MetaGraphScan:
    """The findings of one meta graph: denied ops, and the ops allowed only in their place."""

    def __init__(self, graph: meta_graph_pb2.MetaGraphDef):
        self.graph = graph
        self.library = {function.signature.name: function for function in graph.graph_def.library.function}
        self.nodes = {node.name: node for node in graph.graph_def.node}
        self.callers: dict[str, list[tuple[str, object]]] = {}
        # What each graph node and each function calls, read once (the walks below reuse it).
        self.node_calls: dict[str, list[str]] = {}
        self.function_calls: dict[str, set[str]] = {name: set() for name in self.library}
        for function_name, node in _all_nodes(graph):
            called = _called_functions(node, self.library)
            if function_name == GRAPH:
                self.node_calls[node.name] = called
            else:
                self.function_calls[function_name].update(called)
            for name in called:
                self.callers.setdefault(name, []).append((function_name, node))
        self.asset_tensors = self._asset_tensors()
        self.saver_only = self._saver_only()
        # What can run: functions the graph's nodes call, those the object graph restores as
        # callables, gradient functions (run when fine-tuning differentiates through a call), and
        # what they call. The rest of the library (a loaded SavedModel's functions copied into a
        # TF1 graph) is never invoked.
        self.reachable = self._function_closure(
            [called for calls in self.node_calls.values() for called in calls]
            + list(graph.object_graph_def.concrete_functions)
            + [gradient.gradient_func for gradient in graph.graph_def.library.gradient]
            + [gradient.gradient_func for gradient in graph.graph_def.library.registered_gradients]
        )

    def findings(self) -> Iterator[Finding]:
        for asset in self._asset_file_defs():
            problem = _asset_name_problem(asset.filename)
            if problem:
                yield Finding("", f"asset {asset.tensor_info.name or asset.filename!r}", "", problem)
        for function_name, node in _all_nodes(self.graph):
            if function_name != GRAPH and function_name not in self.reachable:
                continue
            reason = self._refusal(function_name, node)
            if reason is not None:
                yield Finding(function_name, node.name, node.op, reason)

    def _refusal(self, function_name: str, node) -> Optional[str]:
        op = node.op
        if op in self.library:
            return None  # a call of a library function, scanned on its own
        listed = REFUSED_OPS.get(op)
        if listed is None:
            if op_def_registry.get(op) is None:
                return "not an op TensorFlow registers: its kernel would come from a library outside TensorFlow"
            return None
        category, why = listed
        if category == CHECKPOINT:
            return None if (function_name, node.name) in self.saver_only or function_name in self.saver_only else why
        if category == TABLE_FILE:
            return None if self._is_asset(function_name, node.input[_TABLE_FILENAME_INPUT], set()) else why
        if op == "PrintV2":
            stream = _string_attr(node, "output_stream")
            return None if stream in _PRINT_STREAMS or not stream else f"prints to {stream!r}"
        if op in ("DecodeProtoV2", "EncodeProto"):
            source = _string_attr(node, "descriptor_source")
            return None if source in ("", "local://") else f"reads protobuf descriptors from {source!r}"
        return why

    # --- where the saver's checkpoint ops may be -------------------------------------------

    def _saver_only(self) -> set:
        """Graph nodes ((GRAPH, name)) and functions (names) that only the saver reaches."""
        saver = self.graph.saver_def
        roots = [_node_name(name) for name in (saver.save_tensor_name, saver.restore_op_name) if name]
        saver_nodes = self._ancestry(roots)
        other_nodes = self._ancestry([name for name in self.nodes if name not in saver_nodes])
        saver_functions = self._function_closure(called for name in saver_nodes for called in self.node_calls[name])
        other_roots = [called for name in other_nodes for called in self.node_calls[name]]
        other_roots += list(self.graph.object_graph_def.concrete_functions)
        other_roots += [gradient.gradient_func for gradient in self.graph.graph_def.library.gradient]
        other_roots += [gradient.gradient_func for gradient in self.graph.graph_def.library.registered_gradients]
        other_functions = self._function_closure(other_roots)
        only = {(GRAPH, name) for name in saver_nodes - other_nodes}
        return only | (saver_functions - other_functions)

    def _ancestry(self, roots: Iterable[str]) -> set[str]:
        seen: set[str] = set()
        stack = [name for name in roots if name in self.nodes]
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            stack.extend(_node_name(ref) for ref in self.nodes[name].input if _node_name(ref) in self.nodes)
        return seen

    def _function_closure(self, roots: Iterable[str]) -> set[str]:
        seen: set[str] = set()
        stack = [name for name in roots if name in self.library]
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            stack.extend(called for called in self.function_calls[name] if called in self.library)
        return seen

    # --- where a table's file name comes from ----------------------------------------------

    def _asset_file_defs(self) -> list[meta_graph_pb2.AssetFileDef]:
        assets = list(self.graph.asset_file_def)
        collection = self.graph.collection_def.get("saved_model_assets")
        if collection is not None:
            for value in collection.any_list.value:
                asset = meta_graph_pb2.AssetFileDef()
                if value.Unpack(asset):
                    assets.append(asset)
        return assets

    def _asset_tensors(self) -> set[str]:
        names = {_node_name(asset.tensor_info.name) for asset in self._asset_file_defs() if asset.tensor_info.name}
        collection = self.graph.collection_def.get("asset_filepaths")
        if collection is not None:
            names.update(_node_name(name) for name in collection.node_list.value)
        return names

    def _is_asset(self, function_name: str, reference: str, seen: set) -> bool:
        """Whether every value that can reach ``reference`` (an input of a node in ``function_name``)
        is one of the model's asset files."""
        key = (function_name, reference)
        if key in seen:
            return True  # a cycle adds no new origin
        seen.add(key)
        if function_name == GRAPH:
            name = _node_name(reference)
            if name in self.asset_tensors:
                return True
            node = self.nodes.get(name)
            if node is not None and node.op in _VARIABLE_OPS:
                # A variable holds an asset's path when everything assigned to it is one.
                assigned = [
                    other.input[1]
                    for other in self.graph.graph_def.node
                    if other.op in _ASSIGN_OPS and len(other.input) > 1 and _node_name(other.input[0]) == name
                ]
                return bool(assigned) and all(self._is_asset(GRAPH, value, seen) for value in assigned)
            return node is not None and node.op in _PASS_THROUGH and self._is_asset(GRAPH, node.input[0], seen)
        function = self.library[function_name]
        parts = reference.split(":")
        if len(parts) == 1:  # a function argument
            return self._argument_is_asset(function_name, parts[0], seen)
        node = next((n for n in function.node_def if n.name == parts[0]), None)
        return node is not None and node.op in _PASS_THROUGH and self._is_asset(function_name, node.input[0], seen)

    def _argument_is_asset(self, function_name: str, argument: str, seen: set) -> bool:
        arguments = [arg.name for arg in self.library[function_name].signature.input_arg]
        if argument not in arguments:
            return False
        index = arguments.index(argument)
        origins = 0
        saved = self.graph.object_graph_def.concrete_functions.get(function_name)
        if saved is not None and saved.bound_inputs:
            captured = index - (len(arguments) - len(saved.bound_inputs))
            if captured < 0:
                return False  # a caller's argument: whatever the caller passes
            origins += 1
            if not self._object_is_asset(saved.bound_inputs[captured], seen):
                return False
        for caller, node in self.callers.get(function_name, []):
            data_inputs = [ref for ref in node.input if not ref.startswith("^")]
            if node.op not in _CALL_OPS and node.op != function_name or index >= len(data_inputs):
                return False  # passed through a control-flow op, or not at all: not traced
            origins += 1
            if not self._is_asset(caller, data_inputs[index], seen):
                return False
        return origins > 0

    def _object_is_asset(self, node_id: int, seen: set) -> bool:
        nodes = self.graph.object_graph_def.nodes
        if not 0 <= node_id < len(nodes):
            return False
        kind = nodes[node_id].WhichOneof("kind")
        if kind == "asset":
            return True
        if kind == "constant":
            return self._is_asset(GRAPH, nodes[node_id].constant.operation, seen)
        return False
