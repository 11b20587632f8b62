"""LitServe: the model as a LitAPI with LitServe's own batching (LitAPI(max_batch_size, batch_timeout), as its
documentation sets it up); images arrive as base64 in a JSON body on /predict ({"image": ...}), decoded in the
batch's worker. (A multipart upload cannot reach the worker: LitServe 0.2.19 puts the parsed form, starlette's
UploadFile included, on a multiprocessing queue, and pickling it fails.)

python bench/peer_apps/litserve_app.py PORT MAX_BATCH BATCH_TIMEOUT_S
"""
from __future__ import annotations

import base64
import sys

import litserve as ls

from bench.peer_apps.common import Classifier


class ImageAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.clf = Classifier()

    def decode_request(self, request: dict) -> bytes:
        return base64.b64decode(request["image"])

    def predict(self, blobs: list[bytes]) -> list[dict]:
        return self.clf.classify(blobs)

    def encode_response(self, answer: dict) -> dict:
        return answer


if __name__ == "__main__":
    port, batch, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    server = ls.LitServer(ImageAPI(max_batch_size=batch, batch_timeout=timeout), accelerator="cpu")
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")
