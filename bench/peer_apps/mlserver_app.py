"""Seldon's MLServer: the model as a custom runtime (mlserver.MLModel) with MLServer's adaptive batching
(max_batch_size, max_batch_time in model-settings.json, as its documentation sets it up) and its default one
parallel inference worker; images as base64 BYTES in the Open Inference Protocol's JSON.

python bench/peer_apps/mlserver_app.py PORT MAX_BATCH BATCH_TIMEOUT_S   (writes the settings, runs `mlserver start`)
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.codecs import Base64Codec, NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse

from bench.peer_apps.common import Classifier


class ImageModel(MLModel):
    async def load(self) -> bool:
        self.clf = Classifier()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        blobs = Base64Codec.decode_input(payload.inputs[0])
        answers = self.clf.classify(blobs)
        return InferenceResponse(model_name=self.name, outputs=[
            StringCodec.encode_output("label", [a["label"] for a in answers]),
            NumpyCodec.encode_output("confidence", np.array([a["confidence"] for a in answers], np.float32))])


if __name__ == "__main__":
    port, batch, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    folder = Path(tempfile.mkdtemp(prefix="mlserver-"))
    (folder / "settings.json").write_text(json.dumps({"http_port": int(port), "host": "127.0.0.1",
                                                      "grpc_port": 0, "metrics_port": 0, "debug": False}))
    (folder / "model-settings.json").write_text(json.dumps({
        "name": "imgcls", "implementation": "bench.peer_apps.mlserver_app.ImageModel",
        "max_batch_size": batch, "max_batch_time": timeout}))
    os.execvp(sys.executable, [sys.executable, "-m", "mlserver.cli.main", "start", str(folder)])
