"""Validated configuration for pruning and fine-tuning.

The components accept these models (or plain dicts) and serialise them to JSON execution
properties, so a bad value fails when the pipeline is constructed, not hours into a run.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from tfx_model_pruning.engine.importance import get_criterion
from tfx_model_pruning.engine.keras_names import closest_name, loss_class, metric_names


class _StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_patterns(cls, patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"protected layer pattern {pattern!r} is not a valid regular expression: {err}") from err
    return patterns


def _check_registered(cls, name: str) -> str:
    get_criterion(name)  # an unknown name fails here, naming the closest and every registered one
    return name


def _require_labels(criterion: str, label_key: Optional[str]) -> None:
    if get_criterion(criterion).needs_labels and label_key is None:
        raise ValueError(f"the {criterion} criterion reads labels: it needs label_key")


class PruningConfig(_StrictModel):
    """Unstructured magnitude pruning: what to prune and how much.

    Exactly one of ``target_sparsity`` (fraction of targeted weights set to zero),
    ``magnitude_threshold`` (weights with ``|w| < threshold`` set to zero) and ``n_m``
    (``"2:4"``: in every run of M consecutive weights along a kernel's input axis, the N largest
    are kept, the layout sparse tensor cores accelerate) is given.

    Example::

        PruningConfig(target_sparsity=0.8, scope="global", protected_layers=["embed.*"])
    """

    method: Literal["magnitude"] = Field(
        default="magnitude",
        description="magnitude: set the least important weights to zero (the model keeps its shape).",
    )
    criterion: str = Field(
        default="magnitude",
        description="A registered criterion that scores single weights: magnitude (|w|), l2, taylor "
        "(|w x gradient| summed over sample_size train examples), or one of your own (register_criterion).",
    )
    sample_size: int = Field(default=256, ge=1, description="Train examples the taylor criterion reads.")
    label_key: Optional[str] = Field(default=None, description="Label feature; the taylor criterion needs it.")
    loss: Optional[str] = Field(
        default=None,
        description="Keras loss class the taylor criterion differentiates, for a model that carries no compiled "
        "loss (a SavedModel from tf.saved_model.save or Keras 3's model.export); from_logits is read from the model.",
    )
    target_sparsity: Optional[float] = Field(
        default=None, gt=0.0, lt=1.0, description="Fraction of targeted kernel weights to zero, in (0, 1)."
    )
    magnitude_threshold: Optional[float] = Field(
        default=None, gt=0.0, description="Zero every targeted weight with |w| below this value."
    )
    n_m: Optional[str] = Field(
        default=None, pattern=r"^\d+:\d+$", description="N:M pattern, e.g. '2:4': keep N of every M weights."
    )
    scope: Literal["global", "per_layer", "sensitivity"] = Field(
        default="global",
        description="global: one magnitude cut across all targeted layers; per_layer: each layer reaches the "
        "sparsity; sensitivity: per-layer sparsities allocated from measured sensitivity curves.",
    )
    sensitivity_levels: list[float] = Field(
        default_factory=lambda: [0.3, 0.5, 0.7, 0.8, 0.9, 0.95],
        min_length=1,
        description="Sparsities each layer is tried at (scope='sensitivity').",
    )
    protected_layers: list[str] = Field(
        default_factory=list,
        description="Layer names or regular expressions (full match) whose weights are never pruned.",
    )
    protect_output_layer: bool = Field(
        default=True, description="Leave the last weighted layer on every model output dense."
    )
    min_weights: int = Field(
        default=0,
        ge=0,
        description="Leave every kernel with fewer weights than this unpruned: zeros in a small layer (a few "
        "input features wide) save almost nothing and cost the most accuracy per weight.",
    )

    @field_validator("criterion")
    @classmethod
    def _scores_weights(cls, name: str) -> str:
        if not get_criterion(name).scores_weights:
            raise ValueError(
                f"criterion {name!r} scores channels by their activations, not single weights: "
                "use it with method structured"
            )
        return name

    @model_validator(mode="after")
    def _one_criterion(self) -> PruningConfig:
        _require_labels(self.criterion, self.label_key)
        if self.loss is not None and self.criterion != "taylor":
            raise ValueError("loss is read by the taylor criterion only; fine-tuning takes its own (retrain.loss)")
        if self.loss is not None:
            loss_class(self.loss)  # an unknown name fails here, with the closest one suggested
        if self.criterion != "magnitude" and self.magnitude_threshold is not None:
            raise ValueError(
                f"magnitude_threshold is a bound on |w|; it does not combine with the {self.criterion} criterion"
            )
        given = [self.target_sparsity, self.magnitude_threshold, self.n_m]
        if sum(value is not None for value in given) != 1:
            raise ValueError("give exactly one of target_sparsity, magnitude_threshold or n_m")
        if self.target_sparsity is None and self.scope != "global":
            raise ValueError("scope applies to target_sparsity only; a threshold or N:M pattern is the same everywhere")
        if self.scope == "sensitivity":
            if self.label_key is None:
                raise ValueError("scope='sensitivity' measures the loss on held-out examples: it needs label_key")
            if any(not 0.0 < level < 1.0 for level in self.sensitivity_levels):
                raise ValueError(f"sensitivity_levels must lie in (0, 1), got {self.sensitivity_levels}")
            if self.target_sparsity > max(self.sensitivity_levels):
                raise ValueError(
                    f"the sensitivity budget cannot be met: target_sparsity {self.target_sparsity} is above the "
                    f"highest level a layer may reach ({max(self.sensitivity_levels)})"
                )
        if self.n_m is not None:
            n, m = self.n_m_pair
            if not 0 < n < m:
                raise ValueError(f"N:M needs 0 < N < M, got {self.n_m}")
        return self

    @property
    def n_m_pair(self) -> tuple[int, int]:
        n, m = (int(part) for part in self.n_m.split(":"))
        return n, m

    _patterns_compile = field_validator("protected_layers")(_check_patterns)


class StructuredPruningConfig(_StrictModel):
    """Structured pruning: how many units/filters to remove physically and how to pick them.

    Example::

        StructuredPruningConfig(prune_fraction=0.5, criterion="l1", min_units=4)
        StructuredPruningConfig(scope="sensitivity", flops_budget=0.4, label_key="species")
    """

    method: Literal["structured"] = Field(
        default="structured", description="structured: remove whole units/filters (a smaller, faster model)."
    )
    prune_fraction: Optional[float] = Field(
        default=None, gt=0.0, lt=1.0, description="Fraction of removable channels to remove."
    )
    criterion: str = Field(
        default="l1",
        description="A registered criterion: l1/l2 (weight norms); apoz, mean_activation, taylor (measured on "
        "sample_size train examples); or one of your own (register_criterion).",
    )
    sample_size: int = Field(default=256, ge=1, description="Examples the data-driven criteria read.")
    label_key: Optional[str] = Field(default=None, description="Label feature; taylor and sensitivity need it.")
    scope: Literal["global", "per_layer", "sensitivity"] = Field(
        default="per_layer",
        description="per_layer: every coupled group loses the same fraction; global: one ranking across groups; "
        "sensitivity: per-group fractions allocated from measured loss curves to meet flops_budget.",
    )
    flops_budget: Optional[float] = Field(
        default=None, gt=0.0, lt=1.0, description="scope='sensitivity': keep at most this fraction of the FLOPs."
    )
    sensitivity_levels: list[float] = Field(
        default_factory=lambda: [0.25, 0.5, 0.75], min_length=1, description="Fractions each group is tried at."
    )
    min_units: int = Field(default=1, ge=1, description="Fewest units/filters any pruned layer keeps.")
    width_multiple: int = Field(
        default=8,
        ge=1,
        description="Round each pruned group's kept width up to a multiple of this (8 suits CPU vector "
        "units; odd widths are often slower than their FLOPs say); 1 turns it off. A group keeping fewer "
        "than this many units is left at its exact width.",
    )
    min_removed_share: Optional[float] = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="Fail when less than this share of all Dense/convolution channels was removed "
        "(barriers kept the rest); by default the summary only warns.",
    )
    protected_layers: list[str] = Field(
        default_factory=list,
        description="Layer names or regular expressions (full match) whose units/filters are never removed.",
    )

    _patterns_compile = field_validator("protected_layers")(_check_patterns)

    _registered = field_validator("criterion")(_check_registered)

    @model_validator(mode="after")
    def _consistent(self) -> StructuredPruningConfig:
        _require_labels(self.criterion, self.label_key)
        if self.scope == "sensitivity":
            if self.flops_budget is None or self.label_key is None:
                raise ValueError("scope='sensitivity' needs flops_budget and label_key (loss on held-out examples)")
            if self.prune_fraction is not None:
                raise ValueError("scope='sensitivity' allocates the fractions itself; do not set prune_fraction")
            if any(not 0.0 < level < 1.0 for level in self.sensitivity_levels):
                raise ValueError(f"sensitivity_levels must lie in (0, 1), got {self.sensitivity_levels}")
        elif self.prune_fraction is None:
            raise ValueError("prune_fraction is required (or use scope='sensitivity' with flops_budget)")
        elif self.flops_budget is not None:
            raise ValueError("flops_budget applies to scope='sensitivity' only")
        if self.min_removed_share is not None and self.prune_fraction is not None:
            if self.min_removed_share > self.prune_fraction:
                raise ValueError(
                    f"min_removed_share={self.min_removed_share} above prune_fraction={self.prune_fraction} "
                    "can never be met"
                )
        return self


class OneShotPruningConfig(_StrictModel):
    """One-shot pruning from calibration examples, for models too costly to fine-tune: the
    settings wanda and sparsegpt share (``WandaPruningConfig``, ``SparseGPTPruningConfig``).

    ``wanda`` scores each weight by ``|w|`` times the norm of the input it multiplies;
    ``sparsegpt`` also updates the kept weights to make up for the removed ones (a layer-wise
    least-squares reconstruction from the Hessian of the layer's inputs). Both go layer by layer
    in the order the layers run, each layer's inputs computed by the model as already pruned, and
    prune every layer to the same sparsity (or N:M pattern), each output keeping its own share.
    Pair with ``retrain: {epochs: 0}`` to gate the model as pruned.

    Example::

        SparseGPTPruningConfig(target_sparsity=0.5, calibration_examples=256)
        WandaPruningConfig(n_m="2:4")
    """

    method: Literal["wanda", "sparsegpt"] = Field(
        description="wanda: |w| x input norm, kept weights unchanged; sparsegpt: optimal-brain-surgeon removal "
        "with the kept weights updated from the layer's input Hessian."
    )
    target_sparsity: Optional[float] = Field(
        default=None, gt=0.0, lt=1.0, description="Fraction of each targeted kernel's weights set to zero, in (0, 1)."
    )
    n_m: Optional[str] = Field(
        default=None, pattern=r"^\d+:\d+$", description="N:M pattern, e.g. '2:4': keep N of every M weights."
    )
    allocation: Literal["uniform", "erk"] = Field(
        default="uniform",
        description="How target_sparsity is shared among layers: uniform, every layer the same (as the papers); "
        "erk, each layer's density proportional to sum(shape) / prod(shape) (Erdos-Renyi-Kernel), so narrow "
        "layers keep more and wide ones lose more, the same share of all weights in total.",
    )
    calibration_examples: int = Field(
        default=256, ge=1, description="Train examples whose layer inputs are read (streamed in batches)."
    )
    calibration_batch_size: int = Field(
        default=128,
        ge=1,
        description="Calibration examples per forward pass: bounds the memory a layer's inputs take (a "
        "convolution's patches are kernel-size times its input); larger batches spend less on TensorFlow's "
        "per-op overhead.",
    )
    recalibrate_batch_norm: bool = Field(
        default=True,
        description="A BatchNormalization reading a pruned layer's output directly gets the moving mean and "
        "variance of the pruned outputs on the calibration examples (computed exactly from the layer's input "
        "statistics, no labels, no extra pass), before the next layer is judged on its inputs.",
    )
    protected_layers: list[str] = Field(
        default_factory=list,
        description="Layer names or regular expressions (full match) whose weights are never pruned.",
    )
    protect_output_layer: bool = Field(
        default=True, description="Leave the last weighted layer on every model output dense."
    )
    min_weights: int = Field(default=0, ge=0, description="Leave every kernel with fewer weights than this unpruned.")

    _patterns_compile = field_validator("protected_layers")(_check_patterns)

    @model_validator(mode="after")
    def _one_pattern(self) -> OneShotPruningConfig:
        if (self.target_sparsity is None) == (self.n_m is None):
            raise ValueError("give exactly one of target_sparsity or n_m")
        if self.n_m is not None:
            n, m = self.n_m_pair
            if not 0 < n < m:
                raise ValueError(f"N:M needs 0 < N < M, got {self.n_m}")
        if self.allocation != "uniform" and self.target_sparsity is None:
            raise ValueError(
                "allocation shares target_sparsity among layers; an N:M pattern is the same in every layer"
            )
        return self

    @property
    def n_m_pair(self) -> tuple[int, int]:
        n, m = (int(part) for part in self.n_m.split(":"))
        return n, m

    @property
    def sample_size(self) -> int:
        """Train examples read (the same name every method's count has)."""
        return self.calibration_examples


class WandaPruningConfig(OneShotPruningConfig):
    """Wanda (Sun et al., 2023): each weight scored by ``|w|`` times the norm of the input it
    multiplies on the calibration examples; the kept weights are not changed.

    Example::

        WandaPruningConfig(target_sparsity=0.5, allocation="erk")
    """

    method: Literal["wanda"] = Field(
        default="wanda", description="wanda: |w| x input norm, compared per output; kept weights unchanged."
    )


class SparseGPTPruningConfig(OneShotPruningConfig):
    """SparseGPT (Frantar and Alistarh, 2023): weights removed column by column with the optimal
    brain surgeon update of the rest, from the Hessian of each layer's calibration inputs.

    Example::

        SparseGPTPruningConfig(n_m="2:4", calibration_examples=1024)
    """

    method: Literal["sparsegpt"] = Field(
        default="sparsegpt",
        description="sparsegpt: optimal-brain-surgeon removal, the kept weights updated to make up for the "
        "removed ones, from the layer's input Hessian.",
    )
    damping: float = Field(
        default=0.01,
        gt=0.0,
        lt=1.0,
        description="sparsegpt: added to the Hessian's diagonal, as a fraction of its mean (raised tenfold, up to "
        "four times, when the Hessian is still singular; the report gives the damping used).",
    )
    block_size: int = Field(
        default=128, ge=1, description="sparsegpt: columns whose mask is chosen together, and updated lazily."
    )
    reconstruct: Literal["dense_outputs", "layer_outputs"] = Field(
        default="dense_outputs",
        description="sparsegpt: what each layer's pruned weights reproduce from the pruned model's inputs. "
        "dense_outputs, the unpruned model's outputs at that layer, so each layer also corrects the drift the "
        "layers before it left (one more forward pass of the unpruned model per layer, and a second "
        "inputs x inputs matrix); layer_outputs, the layer's own outputs on those inputs (the paper's objective).",
    )


class LayerRemovalConfig(_StrictModel):
    """Greedy removal of whole layers / residual blocks, each followed by a short fine-tune.

    Example::

        LayerRemovalConfig(label_key="species", tolerance=0.01, fine_tune_steps=50)
    """

    method: Literal["layer_removal"] = Field(
        default="layer_removal", description="layer_removal: drop whole layers or residual blocks, one at a time."
    )
    label_key: str = Field(min_length=1, description="Label feature: removal is judged on labelled examples.")
    tolerance: float = Field(
        default=0.01, ge=0.0, description="Largest allowed drop of the validation metric versus the original model."
    )
    fine_tune_steps: int = Field(default=50, ge=0, description="Batches of fine-tuning after each removal.")
    max_removals: int = Field(default=10, ge=1, description="Most layers or blocks removed.")
    learning_rate: float = Field(default=1e-3, gt=0.0, lt=1.0, description="Adam learning rate of each fine-tune.")
    batch_size: int = Field(default=32, ge=1, description="Examples per batch, for fine-tuning and validation.")
    criterion: Literal["validation"] = Field(
        default="validation", description="validation: a removal is kept when the validation metric stays in tolerance."
    )
    sample_size: int = Field(default=100000, ge=1, description="Most train examples read for fine-tuning.")


class GoalPruningConfig(_StrictModel):
    """Pruning by what the model should become; the method follows from the goal.

    - ``latency``: structured pruning, ``target_ratio`` of the units, filters and heads removed.
      Zeros leave every kernel its shape, and on CPUs TensorFlow and TFLite run a dense kernel
      full of zeros no faster: a model pruned by magnitude to 80% served exactly as fast as its
      parent (docs/serving-speed.md). The model must have Dense, convolution
      or attention layers whose units can be removed; otherwise the pruning fails, saying so.
    - ``size``: magnitude pruning to ``target_ratio`` sparsity: the architecture is kept and the
      zeros compress (gzip), which is what a push stores and transfers.

    The choice and why are in the pruning report (``PruningResult.method_reason``).

    Example::

        GoalPruningConfig(goal="latency", target_ratio=0.5)  # structured: half the units removed
    """

    method: Literal["goal"] = Field(default="goal", description="goal: the method follows from ``goal``.")
    goal: Literal["latency", "size"] = Field(
        description="latency: a smaller, faster model (structured); size: a smaller download (magnitude)."
    )
    target_ratio: float = Field(
        gt=0.0, lt=1.0, description="latency: fraction of units removed; size: fraction of weights set to zero."
    )
    protected_layers: list[str] = Field(
        default_factory=list,
        description="Layer names or regular expressions (full match) never pruned.",
    )

    _patterns_compile = field_validator("protected_layers")(_check_patterns)

    def chosen(self) -> tuple[Union[PruningConfig, StructuredPruningConfig], str]:
        """The method's own config for this goal, and why it was chosen."""
        if self.goal == "latency":
            return (
                StructuredPruningConfig(prune_fraction=self.target_ratio, protected_layers=self.protected_layers),
                f"goal latency: structured pruning removes {self.target_ratio:.0%} of the units, filters and "
                "heads, so every kernel is smaller; zeros (magnitude) would leave each kernel its shape, which "
                "CPUs run no faster",
            )
        return (
            PruningConfig(target_sparsity=self.target_ratio, protected_layers=self.protected_layers),
            f"goal size: magnitude pruning to {self.target_ratio:.0%} sparsity keeps the architecture and its "
            "zeros compress; it makes no kernel faster (for that, goal latency)",
        )


# Every pruning config; ``method`` tells them apart (AnyPruningConfig parses by it).
PruningConfigs = Union[
    PruningConfig,
    StructuredPruningConfig,
    WandaPruningConfig,
    SparseGPTPruningConfig,
    LayerRemovalConfig,
    GoalPruningConfig,
]
AnyPruningConfig = Annotated[PruningConfigs, Field(discriminator="method")]


def reads_examples(config: PruningConfigs) -> Optional[str]:
    """Why pruning by ``config`` reads examples, or None when it does not."""
    if config.method == "goal":
        return reads_examples(config.chosen()[0])
    if config.method == "structured":
        return "structured pruning proves the rebuilt serving signatures on examples"
    if config.method == "layer_removal":
        return "layer removal fine-tunes and validates on examples"
    if config.method in ("wanda", "sparsegpt"):
        return f"{config.method} reads each layer's inputs on calibration examples (train split)"
    if getattr(config, "scope", None) == "sensitivity":
        return "scope='sensitivity' measures the loss on the eval split"
    if get_criterion(config.criterion).needs_sample:
        return f"criterion {config.criterion!r} reads train examples"
    return None


def pruning_config_from_json(text: str) -> PruningConfigs:
    """Parses a pruning config of either method from its JSON form (``method`` picks the model)."""
    return TypeAdapter(AnyPruningConfig).validate_json(text)


class GradualPruningSchedule(_StrictModel):
    """Polynomial-decay sparsity schedule, validated against the run it is used in.

    Example::

        GradualPruningSchedule(final_sparsity=0.9, begin_step=0, end_step=400, frequency=20)
    """

    initial_sparsity: float = Field(default=0.0, ge=0.0, lt=1.0, description="Sparsity at begin_step, in [0, 1).")
    final_sparsity: float = Field(gt=0.0, lt=1.0, description="Sparsity reached at end_step and kept after it.")
    begin_step: int = Field(default=0, ge=0, description="Batch at which pruning starts.")
    end_step: int = Field(ge=1, description="Batch at which final_sparsity is reached; must leave steps to recover.")
    frequency: int = Field(default=10, ge=1, description="Steps between mask updates.")
    power: float = Field(
        default=3.0, gt=0.0, description="Exponent of the polynomial decay: higher prunes faster early on."
    )
    scope: Literal["global", "per_layer"] = Field(
        default="global", description="global: one magnitude cut across layers; per_layer: each layer its sparsity."
    )
    protected_layers: list[str] = Field(
        default_factory=list, description="Layer names or regular expressions (full match) never pruned."
    )
    protect_output_layer: bool = Field(
        default=True, description="Leave the last weighted layer on every model output dense."
    )

    _patterns_compile = field_validator("protected_layers")(_check_patterns)

    def as_pruning_config(self) -> PruningConfig:
        """The one-shot config that selects the same weights at the final sparsity."""
        return PruningConfig(
            target_sparsity=self.final_sparsity,
            scope=self.scope,
            protected_layers=self.protected_layers,
            protect_output_layer=self.protect_output_layer,
        )

    @model_validator(mode="after")
    def _ordered(self) -> GradualPruningSchedule:
        if self.final_sparsity <= self.initial_sparsity:
            raise ValueError(
                f"final_sparsity {self.final_sparsity} must exceed initial_sparsity {self.initial_sparsity}"
            )
        if self.end_step <= self.begin_step:
            raise ValueError(f"end_step {self.end_step} must come after begin_step {self.begin_step}")
        if self.frequency > self.end_step - self.begin_step:
            raise ValueError(
                f"frequency {self.frequency} is longer than the pruning window "
                f"[{self.begin_step}, {self.end_step}]: sparsity would jump straight to the target"
            )
        return self

    def check_fits(self, total_steps: int) -> None:
        """Raises ValueError unless the target is reached with steps left to recover."""
        if self.end_step >= total_steps:
            raise ValueError(
                f"the schedule reaches final_sparsity at step {self.end_step}, but training runs only "
                f"{total_steps} steps: it would never reach its target. Lower end_step or train longer."
            )

    def sparsity_at(self, step: int) -> float:
        if step < self.begin_step:
            return 0.0
        progress = min(1.0, (step - self.begin_step) / (self.end_step - self.begin_step))
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - progress) ** self.power


class DistillationConfig(_StrictModel):
    """Knowledge distillation from the unpruned model while fine-tuning (logits, softmax or sigmoid outputs).

    loss = alpha * hard_label_loss + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

    Example::

        DistillationConfig(temperature=4.0, alpha=0.5)
    """

    temperature: float = Field(
        default=4.0, gt=0.0, description="Softens both models' outputs; higher passes on more about wrong classes."
    )
    alpha: float = Field(default=0.5, ge=0.0, le=1.0, description="Weight of the hard-label loss.")


class RecoveryConfig(_StrictModel):
    """When fine-tuning stops: once the model has recovered its parent's metric, not after a count.

    The parent (unpruned) model's ``metric`` is measured once on the eval split; fine-tuning then
    evaluates the candidate every ``eval_every_steps`` batches and stops at the first evaluation
    where it is within ``tolerance`` of the parent (``recovered``), when neither the metric nor
    the eval loss has improved for ``patience`` evaluations (``plateau``), or when ``max_steps``,
    ``max_epochs`` or ``max_seconds`` is spent (``budget``). The best evaluation's weights are
    restored at the end (the masks hold on every one). In a pipeline, ``metric``,
    ``higher_is_better`` and ``tolerance`` follow the gate's first threshold that bounds a drop
    (half its allowed drop), so the two can never disagree.

    Example::

        RecoveryConfig(metric="SparseCategoricalAccuracy", tolerance=0.005, patience=5, max_steps=2000)
    """

    metric: Optional[str] = Field(
        default=None,
        description="Keras metric class recovered to the parent's value (e.g. 'SparseCategoricalAccuracy'); "
        "in a pipeline the gate's metric. None: the eval loss is watched, and only plateau and budget stop.",
    )
    higher_is_better: bool = Field(
        default=True, description="Direction of the metric (in a pipeline: the gate threshold's)."
    )
    tolerance: Optional[float] = Field(
        default=None,
        gt=0.0,
        description="Recovered once the metric is within this of the parent's, in metric units. Default: half "
        "the gate's max_absolute_drop in a pipeline; else 0.005.",
    )
    relative_tolerance: Optional[float] = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="Instead of tolerance: within this fraction of the parent's value (in a pipeline: half the "
        "gate's max_relative_drop, where it bounds no absolute drop).",
    )
    patience: int = Field(
        default=5, ge=1, description="Evaluations without improvement of the metric or the eval loss before stopping."
    )
    min_improvement: float = Field(
        default=0.001,
        ge=0.0,
        lt=1.0,
        description="Relative fall of the eval loss that counts as progress for patience (any rise of the metric "
        "does): a loss creeping down by float noise is a plateau.",
    )
    eval_every_steps: Optional[int] = Field(
        default=None, ge=1, description="Batches between evaluations; default: one pass over the train split."
    )
    batch_norm_batches: int = Field(
        default=20,
        ge=0,
        description="Before each evaluation, BatchNormalization's moving statistics are recomputed from this "
        "many train batches (no weight changes; 0: never): at momentum 0.99-0.999 they lag the pruned weights "
        "for thousands of steps, and a model that has recovered would be evaluated, and saved, as if it had not.",
    )
    max_epochs: int = Field(default=100, ge=1, description="Budget: passes over the train split.")
    max_steps: Optional[int] = Field(
        default=None, ge=1, description="Budget: batches (counted in whole evaluation intervals)."
    )
    max_seconds: Optional[float] = Field(
        default=None, gt=0.0, description="Budget: wall seconds of training and evaluation, checked at each evaluation."
    )

    @field_validator("metric")
    @classmethod
    def _computable(cls, metric: Optional[str]) -> Optional[str]:
        if metric is not None and metric not in metric_names():
            close = closest_name(metric, metric_names())
            raise ValueError(
                f"fine-tuning cannot compute {metric!r}"
                + (f" (did you mean {close!r}?)" if close else "")
                + ": it measures Keras metric classes built from their name alone that compare labels with "
                f"predictions, as the gate does: {', '.join(metric_names())}"
            )
        return metric

    @model_validator(mode="after")
    def _one_tolerance(self) -> RecoveryConfig:
        if self.tolerance is not None and self.relative_tolerance is not None:
            raise ValueError("give tolerance or relative_tolerance, not both")
        return self

    def tolerance_at(self, parent: float) -> float:
        """The allowed shortfall from the parent's value ``parent``."""
        if self.relative_tolerance is not None:
            return self.relative_tolerance * abs(parent)
        return self.tolerance if self.tolerance is not None else DEFAULT_TOLERANCE


# Half of a one-point accuracy drop: the tolerance outside a pipeline, where no gate sets it.
DEFAULT_TOLERANCE = 0.005


class FineTuneConfig(_StrictModel):
    """How to fine-tune a pruned model: until it has recovered (``recovery``), or for ``epochs``.

    Example::

        FineTuneConfig(label_key="species", recovery={"metric": "SparseCategoricalAccuracy", "tolerance": 0.005})
        FineTuneConfig(label_key="species", epochs=20, learning_rate=1e-3)  # a fixed count
        FineTuneConfig(epochs=3)  # in a notebook, on in-memory (x, y): no label feature to name
    """

    label_key: Optional[str] = Field(
        default=None,
        min_length=1,
        description="Feature holding the label in the tf.Examples (RetrainComponent requires it; in-memory "
        "(x, y) data needs none).",
    )
    epochs: Optional[int] = Field(
        default=None,
        ge=0,
        description="A fixed number of passes (of steps_per_epoch batches each): set, fine-tuning runs exactly "
        "this many and keeps the last weights, ignoring recovery. 0: no fine-tuning at all, the pruned model goes "
        "on as it is (recorded as not fine-tuned in MLMD and the release report). Default: until recovered.",
    )
    recovery: RecoveryConfig = Field(
        default_factory=RecoveryConfig,
        description="When fine-tuning stops without epochs: recovered to the parent, plateau or budget.",
    )
    steps_per_epoch: Optional[int] = Field(
        default=None, ge=1, description="Batches per epoch; default: one pass over the train split."
    )
    batch_size: int = Field(default=32, ge=1, description="Examples per batch.")
    learning_rate: Optional[float] = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="Peak learning rate of a fresh Adam. Default until recovered: learning_rate_factor times the "
        "rate the model was trained with, where its optimizer says, else 1e-3; for a fixed count of epochs: 1e-3.",
    )
    learning_rate_factor: float = Field(
        default=0.3,
        gt=0.0,
        le=10.0,
        description="Default peak learning rate as a multiple of the model's own (read from its optimizer): 0.3 "
        "recovered TFX's penguin model at 80% to 0.98 where 1.0 stalled at 0.97 (docs/fine-tuning.md).",
    )
    schedule: Optional[Literal["warmup_cosine", "constant"]] = Field(
        default=None,
        description="warmup_cosine: linear warm-up over 5% of the budget's steps, then cosine decay to 0 at its "
        "end; constant: the peak rate throughout. Default: warmup_cosine until recovered; constant for a fixed "
        "count of epochs (what epochs always meant).",
    )
    loss: Optional[str] = Field(
        default=None,
        description="Keras loss class name (e.g. 'SparseCategoricalCrossentropy'); "
        "default: the loss the model was compiled with when it was saved.",
    )
    from_logits: Optional[bool] = Field(
        default=None,
        description="Used with `loss`: whether the model outputs logits. Default: read from the model (its final "
        "activation, or its output op); a value that contradicts the model is an error before training.",
    )
    train_split: str = Field(default="train", description="Split of the examples fine-tuning trains on.")
    eval_split: str = Field(
        default="eval", description="Split the parent and the candidate are evaluated on while fine-tuning."
    )
    shuffle_buffer: int = Field(default=1024, ge=1, description="Examples held for shuffling the train split.")
    seed: int = Field(default=0, description="Seed of shuffling and initialisation: the same seed, the same run.")
    gradual_pruning: Optional[GradualPruningSchedule] = Field(
        default=None,
        description="Prune further while fine-tuning, on this schedule (steps count batches); no recovery stop "
        "before its end_step.",
    )
    distillation: Optional[DistillationConfig] = Field(
        default=None, description="Distil from a teacher (the unpruned model) while fine-tuning."
    )
    strategy: Literal["one_device", "mirrored", "multi_worker"] = Field(
        default="one_device",
        description="tf.distribute strategy of fine-tuning: one_device; mirrored (every local GPU, else every "
        "logical CPU); multi_worker (the workers TF_CONFIG names). The model, the teacher and the masks are made "
        "under it; gradual pruning and distillation are distributed too.",
    )

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, loss: Optional[str]) -> Optional[str]:
        if loss is not None:
            loss_class(loss)  # the rule make_loss builds by; a typo gets the closest name
        return loss

    @model_validator(mode="after")
    def _schedule_fits(self) -> FineTuneConfig:
        if self.epochs == 0:
            # Settings that only mean something while training: given with epochs 0, a mistake.
            # Compared with the defaults, not model_fields_set: a config read back from its JSON has every field set.
            given = [name for name in ("gradual_pruning", "distillation") if getattr(self, name) is not None]
            given += ["recovery"] if self.recovery != RecoveryConfig() else []
            if given:
                raise ValueError(
                    f"epochs 0 means no fine-tuning, so {', '.join(given)} would never take effect: drop "
                    f"{'it' if len(given) == 1 else 'them'}, or give epochs (or none, to fine-tune until recovered)"
                )
            return self
        if self.gradual_pruning is not None:
            budget = self.budget_steps()
            if budget is not None:
                self.gradual_pruning.check_fits(budget)
        return self

    @property
    def effective_schedule(self) -> str:
        """The schedule in force: as given, else by the stopping rule."""
        return self.schedule or ("warmup_cosine" if self.until_recovered else "constant")

    @property
    def until_recovered(self) -> bool:
        """Whether fine-tuning stops by ``recovery`` (no fixed ``epochs``)."""
        return self.epochs is None

    @property
    def fine_tunes(self) -> bool:
        """Whether there is any fine-tuning (``epochs: 0`` passes the pruned model on as it is)."""
        return self.epochs != 0

    def budget_steps(self, steps_per_epoch: Optional[int] = None) -> Optional[int]:
        """The most batches fine-tuning may run: epochs x steps, or the recovery budget's tighter bound
        (None while the epoch's length is unknown and no max_steps bounds it)."""
        per_epoch = self.steps_per_epoch or steps_per_epoch
        if self.epochs is not None:
            return self.epochs * per_epoch if per_epoch else None
        bounds = [self.recovery.max_steps] + ([self.recovery.max_epochs * per_epoch] if per_epoch else [])
        bounds = [bound for bound in bounds if bound is not None]
        return min(bounds) if bounds else None
