"""Pipelines that chain the pruning components between a trained model and the Pusher."""

import os

# Must precede the first TensorFlow import: TFX 1.16 and TFMA speak tf-keras (Keras 2).
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
