import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import glob  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipelines import penguin_trainer  # noqa: E402
from pipelines.pruning_pipeline import penguin_data_root  # noqa: E402


@pytest.fixture(scope="session")
def penguin_data() -> str:
    root = penguin_data_root()
    assert os.path.isdir(os.path.join(root, "Split-train")), root
    return root


@pytest.fixture(scope="session")
def penguin_files(penguin_data) -> dict[str, list[str]]:
    return {split: sorted(glob.glob(os.path.join(penguin_data, f"Split-{split}", "*"))) for split in ("train", "eval")}


@pytest.fixture(scope="session")
def penguin_baseline(tmp_path_factory, penguin_files) -> str:
    """A trained penguin classifier saved the way the TFX Trainer saves it (Format-Serving)."""
    artifact_uri = str(tmp_path_factory.mktemp("baseline"))
    penguin_trainer.train_and_export(
        penguin_files["train"],
        penguin_files["eval"],
        os.path.join(artifact_uri, "Format-Serving"),
        train_steps=300,
        eval_steps=5,
    )
    return artifact_uri


@pytest.fixture
def examples_with_empty_eval(tmp_path, penguin_data) -> str:
    """Penguin train split plus an eval split that holds zero examples."""
    root = tmp_path / "examples"
    shutil.copytree(os.path.join(penguin_data, "Split-train"), root / "Split-train")
    (root / "Split-eval").mkdir()
    with tf.io.TFRecordWriter(str(root / "Split-eval" / "data_tfrecord-00000-of-00001.gz"), "GZIP"):
        pass
    return str(root)
