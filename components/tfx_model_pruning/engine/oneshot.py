"""One-shot pruning from calibration examples, no fine-tuning: Wanda and SparseGPT.

Both prune each weight from the inputs its layer really receives, layer by layer in the order
the layers run, each layer's inputs computed by the model whose earlier layers are already
pruned, so every layer is judged by what it will see when served.

- ``wanda`` (Sun et al., 2023, "A Simple and Effective Pruning Approach for Large Language
  Models"): a weight's score is ``|W_ij| * ||X_j||_2``, the size of the weight times the norm of
  the input feature it multiplies over the calibration rows; each output keeps its own largest
  (the comparison is per output, as in the paper). Kept weights are not changed.
- ``sparsegpt`` (Frantar and Alistarh, 2023, "SparseGPT: Massive Language Models Can Be
  Accurately Pruned in One-Shot"): with the Hessian ``H = X^T X`` of the layer's reconstruction
  error, weights are pruned column by column in blocks, each removal's error spread over the
  not-yet-processed weights of its row by the optimal brain surgeon update; the mask is chosen
  per block by ``w^2 / [H^-1]_jj^2``. The kept weights change to make up for the removed ones.
  With ``reconstruct: dense_outputs`` (the default) the layer is first refit to the unpruned
  model's outputs at that layer, ``D W``, from its inputs in the pruned model ``X``, so it also
  corrects the drift earlier layers left (asymmetric calibration, as GPTAQ, 2025); the unpruned
  inputs are read with the unpruned values of the weights changed so far swapped in for a pass.

A layer is a matrix product on its inputs: a Dense kernel directly, an ``EinsumDense`` (the
attention projections) with its contracted axes flattened, a convolution through its patches
(im2col: ``tf.image.extract_patches`` orders a patch as the kernel's ``(kh, kw, channels)``),
a depthwise convolution as one small product per channel, an embedding as a product with one-hot
rows (its Hessian is diagonal, the token counts, so SparseGPT has nothing to spread the error
over and both methods score ``|W| * sqrt(count)``). A layer that is none of these fails before
any work, named with its class and why.

Memory holds one layer's statistics at a time (its ``inputs x inputs`` Gram matrix in float64 for
SparseGPT, or for a layer whose BatchNormalization is re-estimated; a few copies during SparseGPT's
inversion); the calibration rows stream through in batches of ``calibration_batch_size``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import keras as keras3
import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfx_model_pruning.engine import progress
from tfx_model_pruning.engine.graph import first_call_inputs, generation, producing_layer, prunable_sublayer
from tfx_model_pruning.engine.masks import PrunableWeight, keep_largest
from tfx_model_pruning.engine.results import OneShotLayer, OneShotResult

WANDA = "wanda"
SPARSEGPT = "sparsegpt"
DENSE_OUTPUTS = "dense_outputs"
ONE_SHOT_METHODS = (WANDA, SPARSEGPT)
# Damping is raised this many times, tenfold each, when the damped Hessian is still not positive
# definite (inputs that are exact copies of each other); the damping used is reported per layer.
_DAMPING_RETRIES = 4


class OneShotError(ValueError):
    """A one-shot method cannot prune this model as configured; the message names the layers."""


# -- layers as matrix products --------------------------------------------------------------------


def _classes(name: str) -> tuple[type, ...]:
    return tuple(getattr(module.layers, name) for module in (keras, keras3) if hasattr(module.layers, name))


def _own_call(layer, classes: tuple[type, ...]) -> bool:
    """The layer runs the stock ``call`` of the Keras class it is (a subclass may compute anything)."""
    return any(isinstance(layer, cls) and type(layer).call is cls.call for cls in classes)


@dataclass
class _View:
    """How a weight acts as products ``rows @ matrix``: ``groups`` independent ones (a depthwise
    convolution's channels; one otherwise) of ``inputs`` columns each."""

    kind: str
    kernel_shape: tuple[int, ...]
    groups: int
    inputs: int
    run: int  # length of the innermost input axis: N:M runs never cross it (as magnitude's do)
    rows_of: Callable[[tf.Tensor], tf.Tensor]  # layer input -> (groups, rows, inputs)

    def to_matrix(self, kernel: np.ndarray) -> np.ndarray:
        if self.kind == "depthwise":
            kh, kw, channels, multiplier = kernel.shape
            return kernel.reshape(kh * kw, channels, multiplier).transpose(1, 0, 2)
        return kernel.reshape(1, self.inputs, -1)

    def from_matrix(self, matrix: np.ndarray) -> np.ndarray:
        if self.kind == "depthwise":
            return matrix.transpose(1, 0, 2).reshape(self.kernel_shape)
        return matrix.reshape(self.kernel_shape)


def _unsupported(layer, attribute: str) -> Optional[str]:
    """Why the one-shot methods cannot read ``attribute`` of ``layer`` as a matrix product, or None."""
    owner = prunable_sublayer(layer, attribute)
    kind = type(owner).__name__
    if attribute.endswith("recurrent_kernel") or getattr(layer, "cell", None) is not None:
        return f"{kind}: a recurrent layer's kernels read its own earlier outputs, not only its inputs"
    if getattr(owner, "lora_enabled", False) or getattr(owner, "quantization_mode", None):
        return f"{kind} with LoRA or quantization: its kernel is not the weight it multiplies by"
    if _own_call(owner, _classes("Dense")):
        return None
    if _own_call(owner, _classes("EinsumDense")):
        return _einsum_problem(owner)
    if _own_call(owner, _classes("Embedding")):
        return None
    if _own_call(owner, _classes("DepthwiseConv2D")):
        return _conv_problem(owner)
    if _own_call(owner, _classes("Conv1D") + _classes("Conv2D")) and not _own_call(
        owner, _classes("Conv1DTranspose") + _classes("Conv2DTranspose")
    ):
        if getattr(owner, "groups", 1) != 1:
            return f"{kind} with groups={owner.groups}: each group reads its own channels"
        return _conv_problem(owner)
    return f"{kind}: not a Dense, EinsumDense, Conv1D/Conv2D, DepthwiseConv2D or Embedding computed by Keras"


def _conv_problem(layer) -> Optional[str]:
    if layer.data_format != "channels_last":
        return f"{type(layer).__name__} with data_format={layer.data_format!r}: only channels_last is read"
    return None


def _einsum_parts(layer) -> tuple[str, str, str]:
    inputs, rest = layer.equation.split(",")
    kernel, output = rest.split("->")
    return inputs, kernel, output


def _einsum_problem(layer) -> Optional[str]:
    inputs, kernel, output = _einsum_parts(layer)
    contracted = "".join(axis for axis in kernel if axis in inputs and axis not in output)
    if not contracted or not kernel.startswith(contracted) or not inputs.endswith(contracted):
        return (
            f"EinsumDense {layer.equation!r}: its contracted axes are not the input's last and the kernel's first, "
            "in order"
        )
    if any(axis in inputs and axis in output for axis in kernel):
        return f"EinsumDense {layer.equation!r}: an axis of the kernel is also one of the input and the output"
    return None


def _view(layer, attribute: str, kernel_shape: tuple[int, ...]) -> _View:
    owner = prunable_sublayer(layer, attribute)
    if _own_call(owner, _classes("Embedding")):
        return _View("embedding", kernel_shape, 1, kernel_shape[0], kernel_shape[0], _token_counts(kernel_shape[0]))
    if _own_call(owner, _classes("EinsumDense")):
        inputs_spec, kernel, output = _einsum_parts(owner)
        contracted = [axis for axis in kernel if axis in inputs_spec and axis not in output]
        width = int(np.prod(kernel_shape[: len(contracted)]))
        return _View("einsum", kernel_shape, 1, width, kernel_shape[len(contracted) - 1], _flat_rows(width))
    if _own_call(owner, _classes("Dense")):
        return _View("dense", kernel_shape, 1, kernel_shape[0], kernel_shape[0], _flat_rows(kernel_shape[0]))
    if _own_call(owner, _classes("DepthwiseConv2D")):
        kh, kw, channels, _ = kernel_shape
        patches = _patches(owner, kh, kw)

        def per_channel(x: tf.Tensor) -> tf.Tensor:
            rows = tf.reshape(patches(x), [-1, kh * kw, channels])
            return tf.transpose(rows, [2, 0, 1])

        return _View("depthwise", kernel_shape, channels, kh * kw, kw, per_channel)
    if len(kernel_shape) == 3:  # Conv1D: (width, channels, filters), a one-row Conv2D
        width, channels, _ = kernel_shape
        patches = _patches(owner, 1, width, one_dimensional=True)
        return _View("conv", kernel_shape, 1, width * channels, channels, lambda x: patches(x)[None])
    kh, kw, channels, _ = kernel_shape
    patches = _patches(owner, kh, kw)
    return _View("conv", kernel_shape, 1, kh * kw * channels, channels, lambda x: patches(x)[None])


def _flat_rows(width: int) -> Callable[[tf.Tensor], tf.Tensor]:
    def rows(x: tf.Tensor) -> tf.Tensor:
        flat = tf.reshape(tf.cast(x, tf.float32), [-1, width])
        mask = getattr(x, "_keras_mask", None)  # padded positions (mask_zero) are not calibration rows
        if mask is not None and tuple(mask.shape) == tuple(x.shape[:-1]):
            flat = tf.boolean_mask(flat, tf.reshape(mask, [-1]))
        return flat[None]

    return rows


def _token_counts(vocabulary: int) -> Callable[[tf.Tensor], tf.Tensor]:
    def counts(ids: tf.Tensor) -> tf.Tensor:
        ids = tf.reshape(tf.cast(ids, tf.int32), [-1])
        return tf.math.bincount(ids, minlength=vocabulary, maxlength=vocabulary, dtype=tf.float32)

    return counts


def _pair(value, size: int = 2) -> list[int]:
    return [int(value)] * size if isinstance(value, int) else [int(v) for v in value]


def _patches(layer, kh: int, kw: int, one_dimensional: bool = False) -> Callable[[tf.Tensor], tf.Tensor]:
    """The layer's input as im2col rows ``(positions, kh * kw * channels)``, its kernel's order."""
    strides, rates = (
        _pair(layer.strides, 1 if one_dimensional else 2),
        _pair(layer.dilation_rate, 1 if one_dimensional else 2),
    )
    if one_dimensional:
        strides, rates = [1, *strides], [1, *rates]
    padding = layer.padding.upper()

    def patches(x: tf.Tensor) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        if one_dimensional:
            if padding == "CAUSAL":
                x = tf.pad(x, [[0, 0], [rates[1] * (kw - 1), 0], [0, 0]])
            x = x[:, None]
        rows = tf.image.extract_patches(
            x,
            sizes=[1, kh, kw, 1],
            strides=[1, *strides, 1],
            rates=[1, *rates, 1],
            padding="VALID" if padding == "CAUSAL" else padding,
        )
        return tf.reshape(rows, [-1, rows.shape[-1]])

    return patches


# -- calibration: the inputs a layer receives, from the model as pruned so far ---------------------


class _Captured(Exception):
    """Raised inside a hooked call once a layer has read its inputs for this batch: the rest of
    the forward pass is not needed."""


class _Hook:
    """Replaces ``layer.call`` (an instance attribute, removed again on exit) to see its inputs."""

    def __init__(self, layer, on_input: Callable[[Any], None], stop_after: Optional[int] = None):
        self._layer, self._on_input, self._stop_after, self.calls = layer, on_input, stop_after, 0

    def __enter__(self) -> _Hook:
        original = self._layer.call

        def call(*args, **kwargs):
            inputs = args[0] if args else kwargs.get("inputs")
            self._on_input(inputs)
            self.calls += 1
            if self._stop_after is not None and self.calls >= self._stop_after:
                raise _Captured()
            return original(*args, **kwargs)

        self._layer.call = call
        return self

    def __exit__(self, *exc) -> None:
        del self._layer.call


def _forward(model, batch) -> None:
    try:
        model(batch, training=False)
    except _Captured:
        pass


def _batches(features, batch_size: int) -> list[Any]:
    count = int(tf.nest.flatten(features)[0].shape[0])
    return [
        tf.nest.map_structure(lambda tensor, start=start: tensor[start : start + batch_size], features)
        for start in range(0, count, batch_size)
    ]


@dataclass
class _Target:
    weight: PrunableWeight
    layer: Any  # the layer whose call reads the inputs (an attention layer's projection)
    view: _View
    calls: int = 0  # calls per forward pass
    rows_per_example: float = 0.0
    # Inputs not always zero on the first calibration batch (a convolution's patches at the edge
    # of a 1x1 feature map are padding): what SparseGPT's Hessian must be determined on.
    live_inputs: int = 0


def _targets(weights: list[PrunableWeight], layers_by_path: dict[str, Any], method: str) -> list[_Target]:
    """One target per unprotected weight, in the order a forward pass first calls their layers.

    Raises:
      OneShotError: naming every layer the method cannot read.
    """
    problems, targets = [], []
    for weight in weights:
        layer, attribute = layers_by_path[weight.layer_name], weight.attribute
        problem = _unsupported(layer, attribute)
        if problem is not None:
            problems.append(f"{weight.layer_name} ({problem})")
            continue
        view = _view(layer, attribute, tuple(weight.variable.shape))
        targets.append(_Target(weight, prunable_sublayer(layer, attribute), view))
    if problems:
        raise OneShotError(
            f"method {method} cannot prune these layers: {'; '.join(problems)}. Add them to protected_layers "
            "to leave them dense, or use method magnitude"
        )
    return targets


def _discover(model, targets: list[_Target], batch, examples_in_batch: int) -> list[str]:
    """Calls the model once, recording each target's calls per pass and rows per example, and
    orders ``targets`` by first call. Returns the keys of the weights the pass never reached."""
    order: dict[int, int] = {}  # id(target) -> rank of its first call
    hooks = []
    for target in targets:
        rows = {"count": 0, "live": None}

        def seen(x, target=target, rows=rows):
            if not tf.executing_eagerly():
                raise OneShotError(
                    f"layer {target.weight.layer_name} runs inside a compiled function, where its inputs cannot "
                    "be read; one-shot pruning needs the model's layers called eagerly"
                )
            order.setdefault(id(target), len(order))
            values = target.view.rows_of(x)
            if target.view.kind == "embedding":
                rows["count"] += int(tf.size(x))
                return
            rows["count"] += int(values.shape[1])
            live = tf.reduce_any(tf.not_equal(values, 0.0), axis=1)  # (groups, inputs)
            rows["live"] = live if rows["live"] is None else tf.logical_or(rows["live"], live)

        hooks.append((_Hook(target.layer, seen), target, rows))
    for hook, _, _ in hooks:
        hook.__enter__()
    try:
        model(batch, training=False)
    finally:
        for hook, _, _ in hooks:
            hook.__exit__()
    for hook, target, rows in hooks:
        target.calls = hook.calls
        target.rows_per_example = rows["count"] / examples_in_batch
        if rows["live"] is not None:
            target.live_inputs = int(tf.reduce_max(tf.reduce_sum(tf.cast(rows["live"], tf.int32), axis=1)))
    unreached = [target.weight.key for target in targets if target.calls == 0]
    targets.sort(key=lambda target: order.get(id(target), len(targets)))
    return unreached


@dataclass
class _Statistics:
    """A layer's calibration inputs, summed: ``gram`` ``X^T X`` (or None: wanda keeps only its
    diagonal, ``squares``), ``sums`` of the rows, and how many rows. An embedding's ``squares``
    are its token counts. With the dense model's inputs ``D`` to the same layer on the same rows:
    ``cross`` ``X^T D``, and ``dense_signal`` ``||D M||^2`` for the layer's weights ``M``."""

    rows: int
    squares: np.ndarray  # (groups, inputs)
    sums: Optional[np.ndarray] = None  # (groups, inputs)
    gram: Optional[np.ndarray] = None  # (groups, inputs, inputs)
    cross: Optional[np.ndarray] = None  # (groups, inputs, inputs)
    dense_signal: float = 0.0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.squares, self.sums, self.gram, self.cross) if a is not None)


class _DenseValues:
    """The unpruned values of every variable pruning has changed so far, swapped in for a pass to
    read what the dense model feeds a layer, and the pruned ones swapped back after."""

    def __init__(self) -> None:
        self._values: dict[int, tuple[Any, np.ndarray, np.ndarray]] = {}

    def assign(self, variable, value: np.ndarray) -> None:
        dense = self._values[id(variable)][1] if id(variable) in self._values else variable.numpy()
        variable.assign(value)
        self._values[id(variable)] = (variable, dense, variable.numpy())

    def swapped_in(self) -> _Swap:
        return _Swap(list(self._values.values()))


class _Swap:
    def __init__(self, values: list[tuple[Any, np.ndarray, np.ndarray]]):
        self._values = values

    def __enter__(self) -> None:
        for variable, dense, _ in self._values:
            variable.assign(dense)

    def __exit__(self, *exc) -> None:
        for variable, _, pruned in self._values:
            variable.assign(pruned)


def _rows_per_batch(model, target: _Target, batch) -> Optional[tf.Tensor]:
    """The layer's input rows ``(groups, rows, inputs)`` on ``batch``, over all its calls (an
    embedding: its token counts)."""
    captured = []
    with _Hook(target.layer, lambda x: captured.append(target.view.rows_of(x)), stop_after=target.calls):
        _forward(model, batch)
    if target.view.kind == "embedding":
        return tf.add_n(captured)
    return tf.concat(captured, axis=1)


def _statistics(
    model,
    target: _Target,
    batches: list[Any],
    with_gram: bool,
    dense: Optional[_DenseValues] = None,
    matrix: Optional[np.ndarray] = None,
) -> _Statistics:
    """Streams the calibration batches through the model as pruned so far, summing the layer's
    inputs; with ``dense``, also through the unpruned model, for ``cross`` and, with the layer's
    weights ``matrix``, ``dense_signal``."""
    view = target.view
    if view.kind == "embedding":
        stats = _Statistics(0, np.zeros((1, view.inputs)))
        for batch in batches:
            stats.squares[0] += _rows_per_batch(model, target, batch).numpy()
        stats.rows = int(round(stats.squares.sum()))
        return stats
    shape = (view.groups, view.inputs)
    square = (*shape, view.inputs)
    stats = _Statistics(0, np.zeros(shape), np.zeros(shape), np.zeros(square) if with_gram else None)
    if dense is not None:
        stats.cross = np.zeros(square)
    for batch in batches:
        values = _rows_per_batch(model, target, batch)
        stats.rows += int(values.shape[1])
        stats.squares += tf.reduce_sum(tf.square(values), axis=1).numpy()
        stats.sums += tf.reduce_sum(values, axis=1).numpy()
        if stats.gram is not None:
            stats.gram += tf.linalg.matmul(values, values, transpose_a=True).numpy()
        if dense is not None:
            with dense.swapped_in():
                dense_values = _rows_per_batch(model, target, batch)
            stats.cross += tf.linalg.matmul(values, dense_values, transpose_a=True).numpy()
            if matrix is not None:
                outputs = tf.linalg.matmul(tf.cast(dense_values, tf.float64), matrix)
                stats.dense_signal += float(tf.reduce_sum(tf.square(outputs)))
    return stats


def _batch_norm_fed_by(layer, layers: list[Any]) -> Optional[Any]:
    """The BatchNormalization that reads ``layer``'s output directly (no activation between), if
    any: its moving statistics can be recomputed from ``layer``'s input statistics."""
    activation = getattr(layer, "activation", None)
    if activation is not None and getattr(activation, "__name__", "") != "linear":
        return None
    for candidate in layers:
        if not isinstance(candidate, _classes("BatchNormalization")):
            continue
        try:
            if len(generation(candidate).inbound_nodes(candidate)) != 1:
                continue
            (tensor,) = first_call_inputs(candidate)
        except (ValueError, IndexError, AttributeError):
            continue
        axis = candidate.axis if isinstance(candidate.axis, int) else (list(candidate.axis) + [None])[0]
        if producing_layer(tensor) is layer and axis in (-1, len(tensor.shape) - 1):
            return candidate
    return None


def _recalibrate(
    batch_norm, stats: _Statistics, matrix: np.ndarray, bias: Optional[np.ndarray], values: _DenseValues
) -> None:
    """Sets ``batch_norm``'s moving mean and variance to those of ``rows @ matrix + bias`` over
    the calibration rows, exactly, from their sums and Gram matrix: what it would measure on the
    pruned layer's outputs. ``matrix`` is ``(groups, inputs, outputs)``; channels run group-major."""
    mean_rows = stats.sums / stats.rows  # (groups, inputs)
    second = stats.gram / stats.rows
    mean = np.einsum("gi,gio->go", mean_rows, matrix).reshape(-1)
    variance = np.einsum("gio,gij,gjo->go", matrix, second, matrix).reshape(-1) - mean**2
    if bias is not None:
        mean = mean + bias.reshape(-1)
    dtype = batch_norm.moving_mean.dtype
    dtype = dtype if isinstance(dtype, str) else dtype.name
    values.assign(batch_norm.moving_mean, mean.astype(dtype))
    values.assign(batch_norm.moving_variance, np.maximum(variance, 0.0).astype(dtype))


# -- masks -----------------------------------------------------------------------------------------


def _runs(inputs: int, run: int, m: int) -> list[tuple[int, int]]:
    """``(start, length)`` of the N:M runs over ``inputs`` columns: M consecutive columns of the
    innermost input axis (``run`` long); the last of each is shorter when M does not divide it."""
    return [(start + offset, min(m, run - offset)) for start in range(0, inputs, run) for offset in range(0, run, m)]


def _keep_per_output(
    scores: np.ndarray, sparsity: float, runs: Optional[list[tuple[int, int]]], n: int, whole_layer: bool = False
) -> np.ndarray:
    """Keep-mask over ``scores`` ``(groups, inputs, outputs)``: each output drops its
    ``ceil(sparsity * inputs)`` lowest (``whole_layer``: the layer drops its lowest, compared
    across outputs), or, with ``runs``, keeps the N highest of each run."""
    groups, inputs, outputs = scores.shape
    keep = np.ones(scores.shape, dtype=bool)
    if runs is None and whole_layer:
        return keep_largest(scores, sparsity)
    if runs is None:
        pruned = min(inputs, int(math.ceil(sparsity * inputs - 1e-9)))
        if pruned:
            lowest = np.argpartition(scores, pruned - 1, axis=1)[:, :pruned, :]
            np.put_along_axis(keep, lowest, False, axis=1)
        return keep
    for start, length in runs:
        if length <= n:
            continue
        lowest = np.argsort(scores[:, start : start + length, :], axis=1, kind="stable")[:, : length - n, :]
        block = np.ones((groups, length, outputs), dtype=bool)
        np.put_along_axis(block, lowest, False, axis=1)
        keep[:, start : start + length, :] = block
    return keep


def _wanda(matrix: np.ndarray, norms: np.ndarray, sparsity, runs, n, whole_layer: bool = False) -> np.ndarray:
    """Wanda's keep-mask for ``matrix`` ``(groups, inputs, outputs)``; ``norms`` ``(groups, inputs)``.

    Inputs the calibration never fed (a token it never read) score by ``|w|`` among themselves."""
    floor = 1e-6 * max(float(norms.max()), np.finfo(np.float32).tiny)
    return _keep_per_output(np.abs(matrix) * (norms + floor)[:, :, None], sparsity, runs, n, whole_layer)


def _upper_inverse_cholesky(hessian: np.ndarray, damping: float) -> tuple[np.ndarray, float]:
    """The upper Cholesky factor of the damped Hessian's inverse, and the damping it took."""
    diagonal = np.diagonal(hessian, axis1=1, axis2=2)
    scale = diagonal.mean(axis=1)
    for attempt in range(_DAMPING_RETRIES + 1):
        used = damping * 10**attempt
        damped = hessian.copy()
        index = np.arange(hessian.shape[1])
        damped[:, index, index] += used * scale[:, None]
        try:
            inverse = np.linalg.inv(damped)
            return np.linalg.cholesky(inverse).transpose(0, 2, 1), used
        except np.linalg.LinAlgError:
            continue
    raise OneShotError(f"the Hessian stays singular even damped by {used} of its mean diagonal")


def _blocks(inputs: int, block_size: int, runs: Optional[list[tuple[int, int]]]) -> list[tuple[int, int]]:
    """Column blocks of about ``block_size``; with N:M, made of whole runs."""
    if runs is None:
        return [(start, min(start + block_size, inputs)) for start in range(0, inputs, block_size)]
    blocks, start = [], 0
    for run_start, length in runs:
        if run_start + length - start >= block_size:
            blocks.append((start, run_start + length))
            start = run_start + length
    if start < inputs:
        blocks.append((start, inputs))
    return blocks


def _sparsegpt(
    matrix: np.ndarray,
    hessian: np.ndarray,
    sparsity: Optional[float],
    runs: Optional[list[tuple[int, int]]],
    n: int,
    block_size: int,
    damping: float,
    whole_layer: bool = False,
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """SparseGPT on ``matrix`` ``(groups, inputs, outputs)`` with ``hessian`` ``(groups, inputs,
    inputs)``; returns the updated matrix, its keep-mask, the damping used and the relative
    reconstruction error ``||X dW||^2 / ||X W||^2``. ``whole_layer`` chooses each block's mask
    across the groups together, not within each."""
    weights = matrix.transpose(0, 2, 1).astype(np.float64)  # (groups, outputs, inputs), as in the paper
    original, measured = weights.copy(), hessian
    hessian = hessian.copy()
    groups, outputs, inputs = weights.shape
    # An input that is always zero (a patch tap over padding only): its weights change nothing, so
    # they go first, but only as many as the budget asks; the rest stay as they were.
    dead = np.diagonal(hessian, axis1=1, axis2=2) == 0  # (groups, inputs)
    dead_groups, dead_columns = np.nonzero(dead)
    hessian[dead_groups, dead_columns, dead_columns] = 1.0
    upper, used = _upper_inverse_cholesky(hessian, damping)
    pruned = np.zeros(weights.shape, dtype=bool)
    run_length = dict(runs) if runs is not None else {}
    for first, last in _blocks(inputs, block_size, runs):
        block = weights[:, :, first:last].copy()
        errors = np.zeros_like(block)
        inverse = upper[:, first:last, first:last]
        diagonal = np.diagonal(inverse, axis1=1, axis2=2)  # (groups, width)
        block_pruned = np.zeros(block.shape, dtype=bool)
        if runs is None:
            saliency = np.where(dead[:, None, first:last], 0.0, (block / diagonal[:, None, :]) ** 2)
            flat = saliency.reshape(1 if whole_layer else groups, -1)
            count = min(flat.shape[1], int(math.ceil(sparsity * flat.shape[1] - 1e-9)))
            if count:
                lowest = np.argpartition(flat, count - 1, axis=1)[:, :count]
                mask = np.zeros(flat.shape, dtype=bool)
                np.put_along_axis(mask, lowest, True, axis=1)
                block_pruned = mask.reshape(block.shape)
        for column in range(last - first):
            length = run_length.get(first + column)
            if length is not None and length > n:
                span = slice(column, column + length)
                saliency = np.where(
                    dead[:, None, first + column : first + column + length],
                    0.0,
                    (block[:, :, span] / diagonal[:, None, span]) ** 2,
                )
                lowest = np.argsort(saliency, axis=2, kind="stable")[:, :, : length - n]
                run_mask = np.zeros(saliency.shape, dtype=bool)
                np.put_along_axis(run_mask, lowest, True, axis=2)
                block_pruned[:, :, column : column + length] = run_mask
            w = block[:, :, column]
            q = np.where(block_pruned[:, :, column], 0.0, w)
            error = (w - q) / inverse[:, column, column][:, None]
            block[:, :, column:] -= error[:, :, None] * inverse[:, None, column, column:]
            block[:, :, column] = q
            errors[:, :, column] = error
        weights[:, :, first:last] = block
        pruned[:, :, first:last] = block_pruned
        weights[:, :, last:] -= np.matmul(errors, upper[:, first:last, last:])
    weights[pruned] = 0.0
    delta = original - weights
    signal = float(np.einsum("goi,gij,goj->", original, measured, original))
    lost = float(np.einsum("goi,gij,goj->", delta, measured, delta))
    return weights.transpose(0, 2, 1), ~pruned.transpose(0, 2, 1), used, (lost / signal if signal > 0 else 0.0)


def _refit_to_dense(matrix: np.ndarray, hessian: np.ndarray, cross: np.ndarray, damping: float) -> np.ndarray:
    """The dense weights ``M'`` whose outputs on the pruned model's inputs ``X`` come closest to
    the unpruned model's outputs ``D M``: ``argmin ||X M' - D M||^2 + lambda ||M' - M||^2``, that
    is ``M + (H + lambda I)^-1 (X^T D - H) M`` with ``H = X^T X`` (per row) and ``lambda`` the
    damping times H's mean diagonal. SparseGPT then prunes ``M'``: since ``X M'`` is the
    projection of ``D M`` onto what ``X`` can express, its reconstruction of ``X M'`` is the best
    reconstruction of the dense model's outputs (up to the damping)."""
    groups, inputs, _ = hessian.shape
    regularised = hessian.copy()
    scale = np.maximum(np.diagonal(hessian, axis1=1, axis2=2).mean(axis=1), np.finfo(np.float64).tiny)
    index = np.arange(inputs)
    regularised[:, index, index] += damping * scale[:, None]
    dead = np.diagonal(hessian, axis1=1, axis2=2) == 0
    dead_groups, dead_columns = np.nonzero(dead)
    regularised[dead_groups, dead_columns, dead_columns] = 1.0
    return matrix + np.linalg.solve(regularised, np.matmul(cross - hessian, matrix))


def _error_against_dense(
    updated: np.ndarray, matrix: np.ndarray, hessian: np.ndarray, cross: np.ndarray, signal: float, rows: int
) -> float:
    """``||X M_pruned - D M||^2 / ||D M||^2`` over the calibration rows (``signal`` the denominator)."""
    lost = (
        float(np.einsum("gio,gij,gjo->", updated, hessian * rows, updated))
        - 2.0 * float(np.einsum("gio,gij,gjo->", updated, cross, matrix))
        + signal
    )
    return max(lost, 0.0) / signal if signal > 0 else 0.0


def erk_sparsities(shapes: dict[str, tuple[int, ...]], sparsity: float) -> dict[str, float]:
    """Per-weight sparsities averaging ``sparsity`` over all their weights, each weight's density
    proportional to ``sum(shape) / prod(shape)`` (Erdos-Renyi-Kernel, Evci et al. 2020, "Rigging
    the Lottery"): a narrow layer, whose every weight carries more, keeps more. A weight whose
    density would pass 1 is kept dense and the others share its part of the budget."""
    sizes = {key: int(np.prod(shape)) for key, shape in shapes.items()}
    raw = {key: sum(shape) / sizes[key] for key, shape in shapes.items()}
    kept_total = (1.0 - sparsity) * sum(sizes.values())
    dense: set[str] = set()
    while True:
        free = [key for key in shapes if key not in dense]
        budget = kept_total - sum(sizes[key] for key in dense)
        scale = budget / sum(raw[key] * sizes[key] for key in free)
        over = {key for key in free if scale * raw[key] > 1.0}
        if not over:
            return {key: (0.0 if key in dense else 1.0 - scale * raw[key]) for key in shapes}
        dense |= over


# -- the whole model -------------------------------------------------------------------------------


def prune_one_shot(
    model: Any,
    weights: list[PrunableWeight],
    layers_by_path: dict[str, Any],
    calibration: Any,
    config: Any,
    existing_masks: Optional[dict[str, np.ndarray]] = None,
) -> tuple[dict[str, np.ndarray], OneShotResult]:
    """Prunes ``model``'s unprotected ``weights`` in place by ``config.method``; returns the masks
    and what was done per layer.

    ``calibration`` is the model's input features for the calibration examples; ``layers_by_path``
    maps each weight's ``layer_name`` to its layer. Weights an earlier pruning masked stay zero.

    Raises:
      OneShotError: a layer the method cannot read, a layer inside a compiled function, or (for
        sparsegpt) too few calibration rows for a layer's inputs; all of them, before any work.
    """
    started = time.perf_counter()
    method = config.method
    targets = _targets([w for w in weights if not w.protected], layers_by_path, method)
    examples = int(tf.nest.flatten(calibration)[0].shape[0])
    batches = _batches(calibration, config.calibration_batch_size)
    unreached = _discover(model, targets, batches[0], int(tf.nest.flatten(batches[0])[0].shape[0]))
    for key in unreached:
        weight = next(target.weight for target in targets if target.weight.key == key)
        weight.protected_by = "not called by the model's forward pass on the calibration examples"
    targets = [target for target in targets if target.calls]
    if method == SPARSEGPT:
        _require_enough_rows(targets, examples)
    n, m = config.n_m_pair if config.n_m is not None else (0, 0)
    sparsities = {target.weight.key: config.target_sparsity for target in targets}
    if config.target_sparsity is not None and config.allocation == "erk":
        sparsities = erk_sparsities(
            {target.weight.key: tuple(target.weight.variable.shape) for target in targets}, config.target_sparsity
        )
    all_layers = list(layers_by_path.values())
    match_dense = method == SPARSEGPT and config.reconstruct == DENSE_OUTPUTS
    values = _DenseValues()
    masks: dict[str, np.ndarray] = {}
    result = OneShotResult(method, examples, 0.0, 0, reconstruct=config.reconstruct if method == SPARSEGPT else None)
    for done, target in enumerate(targets):
        layer_started = time.perf_counter()
        view, variable = target.view, target.weight.variable
        batch_norm = (
            _batch_norm_fed_by(target.layer, all_layers)
            if config.recalibrate_batch_norm and view.kind != "embedding" and target.calls == 1
            else None
        )
        kernel = variable.numpy()
        previous = (existing_masks or {}).get(target.weight.key)
        if previous is not None and previous.shape == kernel.shape:
            kernel = kernel * previous
        matrix = view.to_matrix(kernel)
        stats = _statistics(
            model,
            target,
            batches,
            with_gram=method == SPARSEGPT or batch_norm is not None,
            dense=values if match_dense and view.kind != "embedding" else None,
            matrix=matrix.astype(np.float64),
        )
        result.peak_statistics_bytes = max(result.peak_statistics_bytes, stats.nbytes)
        runs = _runs(view.inputs, view.run, m) if m else None
        # A depthwise channel reads only its kh * kw taps: a share per channel (5 of 9 at 0.5) would
        # cut every channel alike, so the layer's weights are compared together.
        whole_layer = view.kind == "depthwise"
        damping = error = None
        if view.kind == "embedding" or method == WANDA:
            norms = np.sqrt(stats.squares / max(stats.rows, 1))
            keep = _wanda(matrix, norms, sparsities[target.weight.key], runs, n, whole_layer)
            updated = matrix * keep
        else:
            hessian = stats.gram / max(stats.rows, 1)
            refit = matrix
            if stats.cross is not None:
                refit = _refit_to_dense(matrix, hessian, stats.cross / stats.rows, config.damping)
            updated, keep, damping, error = _sparsegpt(
                refit,
                hessian,
                sparsities[target.weight.key],
                runs,
                n,
                config.block_size,
                config.damping,
                whole_layer,
            )
        if previous is not None and previous.shape == kernel.shape:
            keep &= view.to_matrix(previous)
            updated = updated * keep
        if stats.cross is not None:
            error = _error_against_dense(updated, matrix, hessian, stats.cross, stats.dense_signal, stats.rows)
        mask = view.from_matrix(keep)
        values.assign(variable, view.from_matrix(updated).astype(variable.dtype.as_numpy_dtype))
        masks[target.weight.key] = mask
        if batch_norm is not None:
            bias = getattr(target.layer, "bias", None)
            _recalibrate(batch_norm, stats, updated, None if bias is None else np.asarray(bias), values)
        result.layers.append(
            OneShotLayer(
                layer=target.weight.layer_name,
                weight=target.weight.attribute,
                kind=view.kind,
                inputs=view.inputs,
                calibration_rows=stats.rows,
                sparsity=float(1.0 - mask.mean()),
                seconds=round(time.perf_counter() - layer_started, 3),
                damping=damping,
                relative_error=error,
                recalibrated=batch_norm.name if batch_norm is not None else None,
            )
        )
        progress.advance(
            done + 1, len(targets), f"{method}: {target.weight.layer_name} {target.weight.attribute} pruned"
        )
    result.seconds = round(time.perf_counter() - started, 3)
    return masks, result


def _require_enough_rows(targets: list[_Target], examples: int) -> None:
    """SparseGPT solves for each layer from its Hessian: with fewer calibration rows than inputs
    the Hessian is rank-deficient and the update fits the calibration rows, not the layer."""
    short = []
    for target in targets:
        if target.view.kind == "embedding":
            continue
        rows = int(target.rows_per_example * examples)
        if rows < target.live_inputs:
            needed = math.ceil(target.live_inputs / max(target.rows_per_example, 1e-9))
            short.append(
                f"{target.weight.layer_name} ({target.live_inputs} inputs not always zero, {rows} rows from "
                f"{examples} examples; needs at least {needed} examples)"
            )
    if short:
        raise OneShotError(
            "sparsegpt needs at least as many calibration rows as a layer has inputs, or its Hessian is singular "
            f"and the update fits the calibration examples instead of the layer: {'; '.join(short)}. Raise "
            "calibration_examples, protect these layers, or use method wanda (which needs only input norms)"
        )
