"""What the engine returns: typed results, and their JSON form (the files the components write).

``PruningResult.to_json()`` is ``report.json`` of a PruneComponent run; ``from_json`` reads it
back. Every figure in these types was measured on the models, never copied from a config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any, Optional


@dataclass
class ModelStats:
    """One model, measured: its weights, what it costs to run, and its size on disk."""

    params: int
    kernel_params: int
    kernel_zeros: int
    kernel_sparsity: float
    masked_params: int
    masked_sparsity: float  # zeros among the weights the masks name (the pruned layers)
    nonzero_params: int
    weights_gzip_bytes: int
    flops: Optional[int]  # None: a model without Keras layers, whose shapes are unknown
    saved_model_bytes: int  # saved the way pruned models are saved
    gzip_bytes: int
    latency_ms_batch_1: Optional[float] = None  # median CPU latency of one forward pass
    latency_ms_batch_64: Optional[float] = None
    latency_iqr_ms_batch_1: Optional[list[float]] = None  # [25th, 75th] percentile, when timed in alternation
    latency_iqr_ms_batch_64: Optional[list[float]] = None
    latency_timing: str = "separately"  # or "in alternation" with the model on the other side of the report
    input_saved_model_bytes: Optional[int] = None  # the SavedModel as it was handed in

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelStats:
        return cls(**data)


@dataclass
class Curve:
    """Held-out loss of the model with one layer (or channel family) pruned alone at each level."""

    key: str
    params: int
    levels: list[float]
    losses: list[float]


@dataclass
class SensitivityResult:
    dense_loss: float
    curves: list[Curve]
    allocation: dict[str, float]  # curve key -> chosen sparsity (or fraction of units)
    flops_budget: Optional[float] = None  # structured pruning's budget, when it drove the allocation

    def to_json(self) -> dict[str, Any]:
        return {
            "dense_loss": self.dense_loss,
            "curves": {c.key: {"params": c.params, "levels": c.levels, "losses": c.losses} for c in self.curves},
            "allocation": self.allocation,
            "flops_budget": self.flops_budget,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SensitivityResult:
        curves = [Curve(key, c["params"], c["levels"], c["losses"]) for key, c in data["curves"].items()]
        return cls(data["dense_loss"], curves, data["allocation"], data.get("flops_budget"))


@dataclass
class LayerWidth:
    before: int
    after: int


@dataclass
class StructureChange:
    """What structured pruning removed, and what it could not touch (barriers) and why."""

    removable_units: int
    removed_units: int
    widths: dict[str, LayerWidth]
    barriers: dict[str, str]
    params_before: int
    params_after: int
    # Output channels of every Dense/convolution-like layer, barriers and protected ones included:
    # the honest denominator ("removed / removable" hides what barriers kept).
    channels_before: int = 0
    channels_removed: int = 0
    # Layers whose outputs a removal changes beyond disconnecting the removed channels (a
    # LayerNormalization renormalises the kept ones): the rebuilt model is close, not exact.
    approximate: dict[str, str] = field(default_factory=dict)
    sensitivity: Optional[SensitivityResult] = None  # scope="sensitivity"; also PruningResult.sensitivity

    @property
    def removed_share(self) -> float:
        return self.channels_removed / self.channels_before if self.channels_before else 0.0


@dataclass
class WeightRow:
    """One prunable weight after magnitude pruning."""

    layer: str
    weight: str
    shape: list[int]
    params: int
    nonzeros_before: int
    nonzeros_after: int
    sparsity_before: float
    sparsity_after: float
    protected_by: Optional[str]


@dataclass
class RemovalStep:
    """One greedy step of layer removal: the least harmful candidate, tried and kept or rolled back."""

    removed: str
    candidates: int
    drop_before_fine_tune: float
    drop_after_fine_tune: float
    params: int
    kept: bool


@dataclass
class LayerRemovalResult:
    metric: str
    baseline: float
    tolerance: float
    steps: list[RemovalStep]
    stop_reason: Optional[str]  # why the search ended before max_removals, if it did
    params_before: int
    params_after: int

    @property
    def removed(self) -> list[str]:
        return [step.removed for step in self.steps if step.kept]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "removed": self.removed}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LayerRemovalResult:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["steps"] = [RemovalStep(**step) for step in data["steps"]]
        return cls(**values)


@dataclass
class OneShotLayer:
    """What one-shot pruning did to one weight."""

    layer: str
    weight: str
    kind: str  # dense, einsum, conv, depthwise, embedding
    inputs: int  # columns of the weight as a matrix product (patch size for a convolution)
    calibration_rows: int  # rows of inputs the statistics were taken over
    sparsity: float
    seconds: float
    damping: Optional[float] = None  # sparsegpt: the damping the Hessian needed
    # sparsegpt: ||X (W - W_pruned)||^2 / ||X W||^2 on the calibration rows (the layer's own error).
    relative_error: Optional[float] = None
    recalibrated: Optional[str] = None  # the BatchNormalization whose moving statistics were recomputed


@dataclass
class OneShotResult:
    """What a one-shot method (wanda, sparsegpt) did, layer by layer, in the order it pruned them."""

    method: str
    calibration_examples: int
    seconds: float
    peak_statistics_bytes: int  # the largest layer statistics held at once
    layers: list[OneShotLayer] = field(default_factory=list)
    reconstruct: Optional[str] = None  # sparsegpt: dense_outputs or layer_outputs

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OneShotResult:
        return cls(**{**data, "layers": [OneShotLayer(**row) for row in data["layers"]]})


@dataclass
class PruningResult:
    """What ``prune_saved_model`` did; ``to_json()`` is the component's ``report.json``."""

    config: dict[str, Any]
    input_model: str
    output_model: str
    signatures: list[str]
    before: ModelStats
    after: ModelStats
    weights: Optional[list[WeightRow]] = None  # magnitude pruning
    structure: Optional[StructureChange] = None  # structured pruning
    dropped_masks: list[str] = field(default_factory=list)  # earlier masks a rebuilt model no longer has
    layer_removal: Optional[LayerRemovalResult] = None
    sensitivity: Optional[SensitivityResult] = None
    method_reason: str = ""  # why this method, when the config named a goal (GoalPruningConfig)
    one_shot: Optional[OneShotResult] = None  # wanda, sparsegpt

    @property
    def method(self) -> str:
        return self.config["method"]

    def to_json(self) -> dict[str, Any]:
        data = {
            "config": self.config,
            "input_model": self.input_model,
            "output_model": self.output_model,
            "signatures": self.signatures,
            "before": asdict(self.before),
            "after": asdict(self.after),
            "weights": [asdict(row) for row in self.weights] if self.weights is not None else None,
            "structure": None,
            "dropped_masks": self.dropped_masks,
            "layer_removal": self.layer_removal.to_json() if self.layer_removal else None,
            "sensitivity": self.sensitivity.to_json() if self.sensitivity else None,
            "method_reason": self.method_reason,
            "one_shot": self.one_shot.to_json() if self.one_shot else None,
        }
        if self.structure is not None:
            data["structure"] = {k: v for k, v in asdict(self.structure).items() if k != "sensitivity"}  # top level
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PruningResult:
        """Reads ``report.json``, in today's layout or in the flat one of release 0.1."""
        data = _current_layout(data)
        sensitivity = SensitivityResult.from_json(data["sensitivity"]) if data.get("sensitivity") else None
        structure = None
        if data.get("structure"):
            raw = dict(data["structure"])
            raw["widths"] = {name: LayerWidth(**w) for name, w in raw["widths"].items()}
            structure = StructureChange(**raw, sensitivity=sensitivity)
        return cls(
            config=data["config"],
            input_model=data["input_model"],
            output_model=data["output_model"],
            signatures=data["signatures"],
            before=ModelStats.from_json(data["before"]),
            after=ModelStats.from_json(data["after"]),
            weights=[WeightRow(**row) for row in data["weights"]] if data.get("weights") is not None else None,
            structure=structure,
            dropped_masks=data.get("dropped_masks", []),
            layer_removal=LayerRemovalResult.from_json(data["layer_removal"]) if data.get("layer_removal") else None,
            sensitivity=sensitivity,
            method_reason=data.get("method_reason") or "",
            one_shot=OneShotResult.from_json(data["one_shot"]) if data.get("one_shot") else None,
        )


def _current_layout(data: dict[str, Any]) -> dict[str, Any]:
    """Release 0.1 wrote structured fields at the top level, weight rows as ``layers`` and
    layer removal's stop as a step; a store kept from then still hands such reports out."""
    if "weights" in data or "structure" in data:
        return data
    data = dict(data)
    data["weights"] = data.pop("layers", None)
    if "widths" in data:
        data["structure"] = {
            "removable_units": data.pop("removable_units"),
            "removed_units": data.pop("removed_units"),
            "widths": data.pop("widths"),
            "barriers": data.pop("barriers"),
            "params_before": data["before"]["params"],
            "params_after": data["after"]["params"],
        }
    if data.get("layer_removal"):
        removal = dict(data["layer_removal"])
        stops = [step["stop"] for step in removal["steps"] if "stop" in step]
        removal["steps"] = [step for step in removal["steps"] if "stop" not in step]
        removal["stop_reason"] = stops[0] if stops else None
        data["layer_removal"] = removal
    return data
