"""Dataset spec, dataset adapters, input checks and the tf.Transform preprocessing_fn."""
