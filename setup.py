"""Installable package: TFX components that prune, fine-tune and gate Keras models.

One import root, ``tfx_model_pruning``, so that the repository's generic folder names never
shadow a user's own packages: ``components/`` is the package itself (``tfx_model_pruning``,
``tfx_model_pruning.engine``, ...) and ``pipelines/`` is ``tfx_model_pruning.pipelines``.
"""

from setuptools import find_packages, setup

ROOT = "tfx_model_pruning"

setup(
    name="tfx-model-pruning",
    version="0.1.0",
    description="TFX components that prune a trained Keras model, fine-tune it, gate it and hand it to the Pusher.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.11",
    packages=[ROOT]
    + [f"{ROOT}.{name}" for name in find_packages("components")]
    + [f"{ROOT}.pipelines"]
    + [f"{ROOT}.pipelines.{name}" for name in find_packages("pipelines")],
    package_dir={ROOT: "components", f"{ROOT}.pipelines": "pipelines"},
    package_data={f"{ROOT}.evaluator_gate": ["templates/*.html.j2"], f"{ROOT}.pipelines": ["presets/*.yaml"]},
    install_requires=[
        "tfx==1.16.0",
        "tensorflow>=2.16,<2.17",
        "tf-keras>=2.16,<2.17",
        "tensorflow-model-analysis>=0.47,<0.48",
        "tensorflow-model-optimization==0.8.1",
        "kfp>=2,<2.8",
        "protobuf>=3.20.3,<4",
        "apache-beam[gcp]>=2.53,<2.70",
        # tfx-bsl imports dill, which recent Beam no longer installs.
        "dill",
        "pydantic>=2,<3",
        "tabulate",
        "pyyaml",
        "matplotlib>=3.8,<3.10",
        "jinja2>=3,<4",
        "scipy",  # Wilson intervals next to the gate's accuracy bounds
    ],
    extras_require={"dev": ["pytest", "pytest-xdist", "ruff", "scikit-learn"]},
    entry_points={"console_scripts": [f"prune-pipeline={ROOT}.pipelines.cli:main"]},
)
