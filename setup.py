"""Installable package: TFX components that prune, fine-tune and gate Keras models.

Two import packages, each a folder of the same name, so that an import path is a file path and
the repository's generic folder names never shadow a user's own packages:
``components/tfx_model_pruning/`` (the components and their engine, ``tfx_model_pruning.engine``)
and ``pipelines/tfx_model_pruning_pipelines/`` (the pipeline, its CLI and its Kubeflow compiler).
"""

from setuptools import find_packages, setup

ROOT, PIPELINES = "tfx_model_pruning", "tfx_model_pruning_pipelines"

TFX_1_16 = 'python_version < "3.11"'
TFX_1_16_STACK = [
    "tfx==1.16.0",
    "tensorflow>=2.16,<2.17",
    "tf-keras>=2.16,<2.17",
    "tensorflow-model-analysis>=0.47,<0.48",
    "kfp>=2,<2.8",
    "protobuf>=3.20.3,<4",
    "apache-beam[gcp]>=2.53,<2.70",
    "matplotlib>=3.8,<3.10",
]
TFX_1_21 = 'python_version >= "3.11"'
TFX_1_21_STACK = [
    "tfx==1.21.0",
    "tensorflow-model-analysis>=0.52,<0.53",
    "tensorflow>=2.21,<2.22",
    "tf-keras>=2.21,<2.22",
    # tfx[kfp] adds nothing on Python >= 3.12: the KFP SDK is listed itself.
    "kfp>=2.6,<2.17",
    "protobuf>=6,<7",
    "apache-beam[gcp]>=2.77,<2.78",
    # TensorFlow 2.21 no longer installs it; TFX's Trainer imports it.
    "tensorboard",
    "matplotlib>=3.8",
]

setup(
    name="tfx-model-pruning",
    version="0.1.0",
    description="TFX components that prune a trained Keras model, fine-tune it, gate it and hand it to the Pusher.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # TFX 1.16 on Python 3.10 (what Debian 12 runs natively); TFX 1.21 on Python 3.11, 3.12 and
    # 3.13 (TensorFlow's images, Ubuntu 24.04, Debian 13). stacks/ holds each one's tested pins.
    python_requires=">=3.10,<3.14",
    packages=find_packages("components") + find_packages("pipelines"),
    package_dir={ROOT: f"components/{ROOT}", PIPELINES: f"pipelines/{PIPELINES}"},
    package_data={f"{ROOT}.evaluator_gate": ["templates/*.html.j2"], PIPELINES: ["presets/*.yaml"]},
    install_requires=[
        *(f"{requirement}; {TFX_1_16}" for requirement in TFX_1_16_STACK),
        *(f"{requirement}; {TFX_1_21}" for requirement in TFX_1_21_STACK),
        "tensorflow-model-optimization==0.8.1",
        # tfx-bsl imports dill, which recent Beam no longer installs.
        "dill",
        "pydantic>=2,<3",
        "tabulate",
        "pyyaml",
        "jinja2>=3,<4",
        "scipy",  # Wilson intervals next to the gate's accuracy bounds
    ],
    extras_require={
        "dev": ["pytest", "pytest-xdist", "ruff", "scikit-learn"],
        # The docs site (make docs). pymdown-extensions 12 changed the highlighter mkdocstrings 1.0 subclasses.
        "docs": [
            "mkdocs>=1.6,<2",
            "mkdocs-material>=9.5,<10",
            "mkdocstrings[python]>=0.26,<2",
            "pymdown-extensions>=10,<12",
        ],
    },
    entry_points={"console_scripts": [f"prune-pipeline={PIPELINES}.cli:main"]},
)
