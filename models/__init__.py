"""The project's own wake-word models: the training recipe, shipped model files and cards."""
