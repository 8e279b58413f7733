"""The frozen backbone in ONNX Runtime: a window of log-mel frames in, one embedding out.

One thread, no spinning: on a Raspberry Pi the audio loop shares four small cores with
everything else, and a spinning ONNX thread pool would burn a core while it waits.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..errors import ModelError


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file (what a model card records)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Backbone:
    """An ONNX model mapping (1, context, n_mels) float32 to (1, embed) float32."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"{path}: cannot load the backbone ({exc})") from exc
        inp = self.session.get_inputs()[0]
        out = self.session.get_outputs()[0]
        if len(inp.shape) != 3 or len(out.shape) != 2:
            raise ModelError(f"{path}: backbone must map (1, context, mels) to (1, embed)")
        self.input_name = inp.name
        self.context = int(inp.shape[1])
        self.n_mels = int(inp.shape[2])
        self.embed = int(out.shape[1])

    def __call__(self, mel_window: np.ndarray) -> np.ndarray:
        """(context, n_mels) -> (embed,)."""
        x = np.asarray(mel_window, np.float32)[None]
        return self.session.run(None, {self.input_name: x})[0][0]
