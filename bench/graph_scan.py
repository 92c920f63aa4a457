"""The graph scan over models others wrote: false positives (should be none) and what a scan costs.

    .venv/bin/python bench/graph_scan.py                          # every tf_keras.applications model, TFX testdata
    .venv/bin/python bench/graph_scan.py --models ResNet50 MobileNetV2 --repeats 5
    .venv/bin/python bench/graph_scan.py --keras3                 # keras.applications, saved with model.export()

Each stock application is built with random weights at its default input size and saved as its
library saves it (tf-keras ``model.save(save_format="tf")``; Keras 3 ``model.export()``), into
``--cache`` so a second run scans the same files. Each SavedModel in TFX's own
``tfx/components/testdata`` is scanned too. The scan (``scan_model_dir``: parse ``saved_model.pb``,
walk every graph, function and file) is timed ``--repeats`` times; the table gives the median
and the range, the op types and functions found, and every finding (a false positive: none of
these models reads files or calls Python).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Every application tf_keras.applications and keras.applications share, at its default input size.
APPLICATIONS = (
    "ConvNeXtTiny", "DenseNet121", "DenseNet169", "DenseNet201", "EfficientNetB0", "EfficientNetB1",
    "EfficientNetB2", "EfficientNetB3", "EfficientNetB4", "EfficientNetB5", "EfficientNetB6", "EfficientNetB7",
    "EfficientNetV2B0", "EfficientNetV2B1", "EfficientNetV2B2", "EfficientNetV2B3", "EfficientNetV2S",
    "EfficientNetV2M", "EfficientNetV2L", "InceptionResNetV2", "InceptionV3", "MobileNet", "MobileNetV2",
    "MobileNetV3Small", "MobileNetV3Large", "NASNetMobile", "NASNetLarge", "RegNetX002", "RegNetY002",
    "ResNet50", "ResNet101", "ResNet152", "ResNet50V2", "ResNet101V2", "ResNet152V2", "ResNetRS50", "VGG16",
    "VGG19", "Xception", "ConvNeXtSmall",
)  # fmt: skip


def save_application(name: str, directory: str, keras3: bool) -> str:
    if os.path.exists(os.path.join(directory, "saved_model.pb")):
        return directory
    if keras3:
        import keras
    else:
        import tf_keras as keras
    build = getattr(keras.applications, name)
    model = build(weights=None)
    if keras3:
        model.export(directory, verbose=False)
    else:
        model.save(directory, save_format="tf")
    keras.backend.clear_session()
    return directory


def tfx_testdata_models() -> list[str]:
    import tfx

    root = os.path.join(os.path.dirname(tfx.__file__), "components", "testdata")
    return sorted(os.path.dirname(path) for path in glob.glob(f"{root}/**/saved_model.pb", recursive=True))


def measure(model_dir: str, repeats: int) -> dict:
    from tfx_model_pruning.engine.graph_scan import scan_model_dir

    seconds, scan = [], None
    for _ in range(repeats):
        scan = scan_model_dir(model_dir)
        seconds.append(scan.seconds)
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "op_types": len(scan.ops),
        "functions": scan.functions,
        "findings": [str(finding) for finding in scan.findings],
        "pb_mib": os.path.getsize(os.path.join(model_dir, "saved_model.pb")) / 2**20,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(APPLICATIONS), help="applications to scan")
    parser.add_argument("--keras3", action="store_true", help="Keras 3 keras.applications, model.export()")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/tfx-model-pruning/graph-scan"))
    parser.add_argument("--no-testdata", action="store_true", help="leave TFX's testdata models out")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    if not args.keras3:
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    flavour = "keras3" if args.keras3 else "tf_keras"
    rows = []
    for name in args.models:
        model_dir = save_application(name, os.path.join(args.cache, flavour, name), args.keras3)
        rows.append({"model": f"{flavour}.applications.{name}", **measure(model_dir, args.repeats)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if not args.no_testdata:
        for model_dir in tfx_testdata_models():
            label = "tfx testdata " + model_dir.split("testdata/")[-1]
            rows.append({"model": label, **measure(model_dir, args.repeats)})
    from tabulate import tabulate

    table = [
        [
            row["model"],
            f"{row['pb_mib']:.1f}",
            row["op_types"],
            row["functions"],
            f"{row['median_s']:.3f} ({row['min_s']:.3f}-{row['max_s']:.3f})",
            len(row["findings"]),
        ]
        for row in rows
    ]
    headers = ["model", "saved_model.pb MiB", "op types", "functions", "scan s, median (range)", "findings"]
    print(tabulate(table, headers=headers, tablefmt="github"))
    refused = [row for row in rows if row["findings"]]
    for row in refused:
        print(f"FALSE POSITIVE {row['model']}: {row['findings'][:3]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
