import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import glob  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfx_model_pruning_pipelines import penguin_trainer  # noqa: E402
from tfx_model_pruning_pipelines.penguin_trainer import FEATURE_KEYS as PENGUIN_FEATURE_KEYS  # noqa: E402
from tfx_model_pruning_pipelines.penguin_trainer import penguin_data_root  # noqa: E402

# The integration tier: pipelines (LocalDagRunner, Beam, TFMA), subprocesses, package builds and
# trained-and-saved baselines. Everything else is the unit tier: `pytest -m "not integration"`.
# A module of such tests says so itself (`pytestmark = pytest.mark.integration`); a test elsewhere
# that uses a heavy fixture carries `@pytest.mark.integration`. HEAVY_FIXTURES names the fixtures
# defined below that train, save or run Beam; collection fails for an unmarked test that uses one.
HEAVY_FIXTURES = {"penguin_baseline", "penguin_transform_graph", "examples_with_empty_eval"}


@pytest.hookimpl(tryfirst=True)  # before -m/-k deselect: every tier checks every test
def pytest_collection_modifyitems(items):
    unmarked = [
        f"{item.nodeid} (uses {', '.join(sorted(HEAVY_FIXTURES & set(item.fixturenames)))})"
        for item in items
        if HEAVY_FIXTURES & set(item.fixturenames) and item.get_closest_marker("integration") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests use a heavy fixture but are not marked integration; add "
            "`@pytest.mark.integration` to the test (or `pytestmark = pytest.mark.integration` to its "
            "module):\n  " + "\n  ".join(unmarked)
        )


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


def analyse_transform(preprocessing_fn, raw_spec, instances, out: str, temp_dir: str) -> str:
    """Runs tf.Transform's analysis of ``preprocessing_fn`` over ``instances`` (dicts of raw
    features as ``raw_spec`` reads them; Beam in memory) and lays the result out as a Transform
    component's ``transform_graph``."""
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import metadata_io

    metadata = tft.DatasetMetadata.from_feature_spec(raw_spec)
    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=temp_dir):
        data = pipeline | beam.Create(instances)
        transform_fn = (data, metadata) | tft_beam.AnalyzeDataset(preprocessing_fn)
        _ = transform_fn | tft_beam.WriteTransformFn(out)
    metadata_io.write_metadata(metadata, os.path.join(out, tft.TFTransformOutput.RAW_METADATA_DIR))
    return out


def analyse_penguin_transform(preprocessing_fn, train_files, out: str, temp_dir: str) -> str:
    """``analyse_transform`` over the penguin train split."""
    raw_spec = {name: tf.io.FixedLenFeature([1], tf.float32) for name in PENGUIN_FEATURE_KEYS}
    raw_spec["species"] = tf.io.FixedLenFeature([1], tf.int64)
    records = tf.data.TFRecordDataset(train_files, compression_type="GZIP")
    instances = [
        {name: [value[0].numpy()] for name, value in tf.io.parse_single_example(record, raw_spec).items()}
        for record in records
    ]
    return analyse_transform(preprocessing_fn, raw_spec, instances, out, temp_dir)


@pytest.fixture(scope="session")
def penguin_transform_graph(tmp_path_factory, penguin_files) -> str:
    """The transform TFX's penguin example computes (its own ``preprocessing_fn``)."""
    from tfx.examples.penguin import penguin_utils_base

    return analyse_penguin_transform(
        penguin_utils_base.preprocessing_fn,
        penguin_files["train"],
        str(tmp_path_factory.mktemp("transform_graph")),
        str(tmp_path_factory.mktemp("tft_tmp")),
    )
