"""The components' arguments, made from their config models: one option, one place.

Each component takes its validated config object (or a mapping of it) as ``config``, and the
same options as keywords; both are checked by the model, once, when the pipeline is built, and
carried to the executor as the model's JSON in one execution property. The keywords, the
signature ``help()`` and IDEs show, and the "Options" part of the docstring are generated
here from the models' fields and their descriptions, so a new field is a new keyword, a new
line of documentation and a new pipeline-file key without another edit.

Example::

    PruneComponent(model=trainer.outputs["model"], config=StructuredPruningConfig(prune_fraction=0.5))
    PruneComponent(model=trainer.outputs["model"], method="structured", prune_fraction=0.5)  # the same
"""

from __future__ import annotations

import inspect
import textwrap
import typing
from typing import Any, Mapping, Optional, Sequence, Union

from pydantic import BaseModel, TypeAdapter
from pydantic_core import PydanticUndefined

from tfx_model_pruning.engine.keras_names import closest_name

ConfigModels = Sequence[type[BaseModel]]


class SharedArgument(typing.NamedTuple):
    """An argument of the component itself, not of its config (how the executor loads, not what it does)."""

    annotation: Any
    default: Any
    doc: str


ALLOW_UNSAFE_LAYERS = SharedArgument(
    bool,
    False,
    "Load models that contain ``Lambda`` or custom layers, whose loading runs code shipped with "
    "the model. Off by default: such models are refused.",
)
ALLOW_OPS = SharedArgument(
    Sequence[str],
    (),
    "Op types the graph scan lets through (``engine.graph_scan.REFUSED_OPS``: file I/O, Python "
    'callbacks, network, ...), e.g. ``["PrintV2"]``. Empty by default: a model whose graphs hold '
    "any of them is refused before it is loaded, and a candidate may hold no op its parent lacks.",
)


def allow_ops_parameter(allow_ops: Sequence[str], component: str) -> Optional[str]:
    """``allow_ops`` as the execution property, checked when the pipeline is built."""
    from tfx_model_pruning.engine.graph_scan import allow_ops_problem

    if isinstance(allow_ops, str):
        raise TypeError(f"{component}: allow_ops is a list of op names, not the string {allow_ops!r}")
    problem = allow_ops_problem(allow_ops)
    if problem:
        raise ValueError(f"{component}: allow_ops {problem}")
    return ",".join(dict.fromkeys(allow_ops)) or None


def allowed_ops(exec_properties: Mapping[str, Any]) -> list[str]:
    """The executor's side of ``allow_ops_parameter``."""
    from tfx_model_pruning.standard_component_specs import ALLOW_OPS_KEY

    return [name for name in (exec_properties.get(ALLOW_OPS_KEY) or "").split(",") if name]


MODULE_FILE = SharedArgument(
    Optional[str],
    None,
    "A Python file of yours, imported by the executor before it reads its config, as TFX's "
    "``module_file``: its ``register_criterion`` and ``register_layer_handler`` calls then take effect "
    "in every executor and Beam worker, on any runner. TFX packages it into a wheel under the "
    "pipeline root when the pipeline is compiled or run, so Kubeflow pods need no copy of it. The "
    "component imports it too, so a registered criterion name is validated when the pipeline is built.",
)
MODULE_PATH = SharedArgument(
    Optional[str],
    None,
    "Instead of ``module_file``: an importable module (installed in the image), e.g. ``my_team.pruning``.",
)


def option_fields(models: ConfigModels) -> dict[str, list[type[BaseModel]]]:
    """Every field name of ``models``, in declaration order, with the models that have it."""
    fields: dict[str, list[type[BaseModel]]] = {}
    for model in models:
        for name in model.model_fields:
            fields.setdefault(name, []).append(model)
    return fields


def _method_of(model: type[BaseModel]) -> Optional[str]:
    field = model.model_fields.get("method")
    return field.default if field is not None else None


def _shown_default(model: type[BaseModel], name: str) -> str:
    field = model.model_fields[name]
    if field.default_factory is not None:
        return repr(field.default_factory())
    if field.default is PydanticUndefined:
        return "required"
    return repr(field.default)


def options_doc(models: ConfigModels) -> str:
    """Docstring lines for every option, from the fields' descriptions (per method where they differ)."""
    lines = []
    for name, owners in option_fields(models).items():
        texts: dict[str, list[str]] = {}
        for model in owners:
            text = f"{model.model_fields[name].description or ''} (default {_shown_default(model, name)})"
            texts.setdefault(text, []).append(_method_of(model) or model.__name__)
        if len(owners) == len(models) and len(texts) == 1:
            described = next(iter(texts))
        else:
            described = "; ".join(f"({', '.join(where)}) {text}" for text, where in texts.items())
        lines.append(_wrapped(name, described))
    return "\n".join(lines)


def _wrapped(name: str, text: str) -> str:
    return textwrap.fill(f"{name}: {text}", width=100, initial_indent=" " * 6, subsequent_indent=" " * 8)


def _field_annotation(models: Sequence[type[BaseModel]], name: str) -> Any:
    annotations = [model.model_fields[name].annotation for model in models]
    unique = list(dict.fromkeys(annotations))
    return Optional[unique[0]] if len(unique) == 1 else Optional[Union[tuple(unique)]]  # noqa: UP007


def component_signature(
    channels: Sequence[inspect.Parameter],
    models: ConfigModels,
    config_annotation: Any,
    shared: Mapping[str, SharedArgument],
) -> inspect.Signature:
    """``(self, <channels>, config=None, *, <every option>=None, <shared arguments>)``."""
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *channels]
    parameters.append(
        inspect.Parameter(
            "config", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=Optional[config_annotation]
        )
    )
    for name, owners in option_fields(models).items():
        parameters.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=_field_annotation(owners, name)
            )
        )
    for name, argument in shared.items():
        parameters.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=argument.default, annotation=argument.annotation
            )
        )
    return inspect.Signature(parameters)


def document(component: type, models: ConfigModels, shared: Mapping[str, SharedArgument]) -> None:
    """Appends the generated options and shared arguments to ``component``'s docstring."""
    shared_lines = "\n".join(_wrapped(name, argument.doc) for name, argument in shared.items() if argument.doc)
    component.__doc__ = (
        f"{component.__doc__.rstrip()}\n\n    Options (each a keyword, or a field of ``config``; generated from "
        f"{', '.join(model.__name__ for model in models)}):\n{options_doc(models)}\n\n"
        f"    Arguments of the component itself:\n{shared_lines}\n"
    )


def build_config(
    adapter: TypeAdapter,
    models: ConfigModels,
    config: Union[BaseModel, Mapping[str, Any], None],
    options: Mapping[str, Any],
    component: str,
) -> BaseModel:
    """The config from ``config`` (a model or a mapping) with the keyword ``options`` over it,
    validated by the model; an unknown keyword is a TypeError naming the closest option."""
    known = option_fields(models)
    unknown = [name for name in options if name not in known]
    if unknown:
        hints = [
            f"{name!r}" + (f" (did you mean {close!r}?)" if (close := closest_name(name, known)) else "")
            for name in unknown
        ]
        raise TypeError(f"{component}() got unexpected option(s) {', '.join(hints)}; its options: {', '.join(known)}")
    if isinstance(config, BaseModel):
        base = config.model_dump(exclude_unset=True)
        if "method" in type(config).model_fields:
            base["method"] = config.method  # the discriminator, stated even where it was the default
    else:
        base = dict(config or {})
    given = {name: value for name, value in options.items() if value is not None}
    merged = {**base, **given}
    if "method" in known and "method" not in merged:
        # A goal names no method: the goal's own config chooses one (GoalPruningConfig).
        merged["method"] = "goal" if "goal" in merged else models[0].model_fields["method"].default
    return adapter.validate_python(merged)
