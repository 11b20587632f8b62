"""LitServe: the model as a LitAPI with LitServe's own batching (LitAPI(max_batch_size, batch_timeout), as its
documentation sets it up); images arrive as multipart uploads on /predict, decoded in the batch's worker.

python bench/peers/litserve_app.py PORT MAX_BATCH BATCH_TIMEOUT_S
"""
from __future__ import annotations

import sys

import litserve as ls
from fastapi import Request

from bench.peers.common import Classifier


class ImageAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.clf = Classifier()

    def decode_request(self, request: Request) -> bytes:
        return request["image"].file.read()

    def predict(self, blobs: list[bytes]) -> list[dict]:
        return self.clf.classify(blobs)

    def encode_response(self, answer: dict) -> dict:
        return answer


if __name__ == "__main__":
    port, batch, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    server = ls.LitServer(ImageAPI(max_batch_size=batch, batch_timeout=timeout), accelerator="cpu")
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")
