"""The docs' configuration reference (docs/configuration.md) is generated from the code, and kept current."""

import os
from typing import Annotated, Literal, Optional, Union

import numpy as np
import pytest
from pydantic import BaseModel, Field

from tfx_model_pruning.engine.importance import Criterion
from tfx_model_pruning.engine.layer_handlers import Barrier, Producer
from tfx_model_pruning_pipelines import reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENT = os.path.join(ROOT, "docs", "configuration.md")


def test_the_docs_blocks_are_what_the_code_generates():
    with open(DOCUMENT, encoding="utf-8") as f:
        stale = reference.stale_blocks(f.read())
    assert not stale, (
        f"docs/configuration.md blocks {stale} are stale: run `{reference.WRITE_COMMAND}` (or `make docs-reference`)"
    )


def test_each_block_lives_once_in_the_docs_page_the_generator_names(monkeypatch, capsys):
    assert os.path.join(ROOT, reference.DOCUMENT) == DOCUMENT
    with open(DOCUMENT, encoding="utf-8") as f:
        text = f.read()
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    for block in reference.BLOCKS:
        assert text.count(reference.start_marker(block)) == 1, block
        assert reference.start_marker(block) not in readme, f"the README links to the reference: {block}"
    monkeypatch.chdir(ROOT)  # as `make docs-reference` runs it: the flag alone names docs/configuration.md
    assert reference.main(["--check"]) == 0
    assert f"{reference.DOCUMENT}: generated blocks up to date" in capsys.readouterr().out


class _Leaf(BaseModel):
    """A nested section."""

    depth: int = Field(default=3, description="How deep.")


class _One(BaseModel):
    kind: Literal["one"] = Field(default="one", description="one: the first way.")
    size: float = Field(description="Only the first way has a size.")


class _Two(BaseModel):
    kind: Literal["two"] = Field(default="two", description="two: the second way.")
    leaf: Optional[_Leaf] = Field(default=None, description="A leaf inside a variant.")


class _Top(BaseModel):
    name: str = Field(default="x|y", description="Pipes are escaped; so is <this>.")
    leaf: _Leaf = Field(default_factory=_Leaf, description="A section.")
    leaves: list[_Leaf] = Field(default_factory=list, description="A list of sections.")
    way: Annotated[Union[_One, _Two], Field(discriminator="kind")] = Field(
        default_factory=lambda: _One(size=0.5), description="Which way."
    )
    later: bool = Field(default=False, description="A field added later appears without editing the generator.")


def test_every_field_is_walked_from_the_models():
    text = reference.config_reference(_Top)
    assert r"| `name` | `x\|y` | Pipes are escaped; so is &lt;this>. |" in text
    assert "| `leaf.depth` | `3` | How deep. |" in text
    assert "| `leaves[].depth` | `3` | How deep. |" in text
    assert "| `way` | `{kind: one, size: 0.5}` | Which way. One of: `kind: one`, `kind: two`" in text
    assert "`way` with `kind: one`: one: the first way." in text
    assert "| `way.size` | required | Only the first way has a size. |" in text
    assert "| `way.leaf.depth` | `3` | How deep. |" in text
    assert "| `later` | `false` | A field added later appears without editing the generator. |" in text
    assert "`way.kind`" not in text, "the discriminator names the variant's table instead"


def test_the_real_pipeline_file_includes_the_prune_retrain_and_gate_keys():
    text = reference.config_reference()
    for key in ("retrain.gradual_pruning.final_sparsity", "gate.thresholds[].metric", "prune.prune_fraction"):
        assert f"| `{key}` |" in text
    for method in ("magnitude", "structured", "layer_removal"):
        assert f"`prune` with `method: {method}`" in text


class _Novel(Criterion):
    """Scores by something new.

    Not shown: only the first paragraph."""

    needs_sample = True
    scores_weights = False

    def __call__(self, model, targets, sample=None):
        return [np.zeros(1) for _ in targets]


class _Custom:
    pass


def test_the_registries_are_read_as_they_are():
    criteria = reference.criteria_reference({"novel": _Novel()})
    assert "| `novel` | `_Novel` | channels | examples | Scores by something new. |" in criteria
    assert "Not shown" not in criteria
    assert "`l1` | `L1Norm` | weights and channels | the weights |" in reference.criteria_reference()

    handlers = reference.handlers_reference(
        {_Custom: (Producer("units", {"kernel": (0, 1)}), False), int: (Barrier("why"), True)}
    )
    assert "| `Producer` | `_Custom` |" in handlers
    assert "| `Barrier`: why | `int` and every subclass |" in handlers


@pytest.fixture
def document_copy(tmp_path):
    path = tmp_path / "page.md"  # a name without "config": the error must name the stale block alone
    with open(DOCUMENT, encoding="utf-8") as f:
        path.write_text(f.read(), encoding="utf-8")
    return path


def test_check_names_the_stale_block_and_the_command_that_fixes_it(document_copy, capsys):
    assert reference.main(["--write", str(document_copy)]) == 0
    text = document_copy.read_text(encoding="utf-8")
    marker = reference.start_marker("criteria")
    document_copy.write_text(text.replace(marker, marker + "\n| `gone` | a criterion that was removed |"), "utf-8")

    assert reference.main(["--check", str(document_copy)]) == 1
    err = capsys.readouterr().err
    assert "criteria" in err and "config" not in err
    assert f"python -m {reference.MODULE} --write {document_copy}" in err

    assert reference.main(["--write", str(document_copy)]) == 0
    assert document_copy.read_text(encoding="utf-8") == text
    assert reference.main(["--check", str(document_copy)]) == 0


def test_a_missing_marker_is_named(document_copy, capsys):
    text = document_copy.read_text(encoding="utf-8")
    document_copy.write_text(text.replace(reference.start_marker("layer_handlers"), ""), "utf-8")
    assert reference.main(["--check", str(document_copy)]) == 1
    assert reference.start_marker("layer_handlers") in capsys.readouterr().err
