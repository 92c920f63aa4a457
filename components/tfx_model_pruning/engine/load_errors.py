"""The errors of reading a model from disk, shared by the SavedModel and ``.keras`` readers."""


class ModelLoadError(ValueError):
    """The given path does not hold a usable SavedModel or Keras model."""


class UnsafeModelError(ModelLoadError):
    """The model holds layers whose loading runs code the model author chose (Lambda, custom classes)."""
