"""SavedModel export for TF Serving, and tools that call exported models."""
