"""Pure Keras 3 multi-task models for conversion chains. Imports nothing from TFX.

    from keras_models import registry, layout
    model = registry.build("shared_bottom", inputs, tasks, {"embedding_dim": 8})
"""

# The models override Keras internals: an untested Keras stops here, before any
# model is built (keras_models.keras_compat; FUNNEL_UNTESTED_KERAS=1 lets one in).
from keras_models import keras_compat  # noqa: E402

keras_compat.check()

# Importing the package registers every model class for keras.models.load_model.
from keras_models import registry  # noqa: E402,F401
