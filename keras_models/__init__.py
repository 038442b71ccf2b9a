"""Pure Keras 3 multi-task models for conversion chains. Imports nothing from TFX.

    from keras_models import registry, layout
    model = registry.build("shared_bottom", inputs, tasks, {"embedding_dim": 8})
"""

# Importing the package registers every model class for keras.models.load_model.
from keras_models import registry  # noqa: E402,F401
