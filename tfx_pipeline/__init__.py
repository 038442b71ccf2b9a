"""The TFX pipeline: definition, Trainer module, evaluation config, CLI."""
