"""Wake-word spotting: log-mel features -> frozen ONNX backbone -> trainable numpy head -> detector."""
