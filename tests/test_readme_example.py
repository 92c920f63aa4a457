"""The docs' engine example (docs/engine.md, once the README's) runs as written (Keras 3,
``import keras``) and with tf-keras, and prints what the page says it prints."""

import contextlib
import io
import os
import re

import pytest

ENGINE_PAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "engine.md")


def _engine_example() -> str:
    with open(ENGINE_PAGE, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("# Use the engine without TFX") :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.mark.parametrize("keras_import", ["import keras", "import tf_keras as keras"])
def test_the_readme_engine_example_runs_and_prints_what_it_says(keras_import):
    code = _engine_example()
    assert code.startswith("import keras\n")  # as a Keras 3 user writes it
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code.replace("import keras\n", keras_import + "\n", 1), ENGINE_PAGE, "exec"), {})
    printed = output.getvalue()
    assert "46% of the channels removed; params 9610 -> 4810" in printed
    sparsity, accuracy = re.search(r"hidden kernel sparsity ([\d.]+), accuracy ([\d.]+)", printed).groups()
    assert float(sparsity) == 0.80 and float(accuracy) > 0.9
