"""KServe's Python ModelServer: the model as a kserve.Model, images as base64 in the V1 protocol's JSON
({"instances": [{"image": {"b64": ...}}]} on /v1/models/imgcls:predict, as KServe's image examples send them).
KServe batches in its InferenceService's batcher, a sidecar of the cluster's agent, not in the Python server: here
every request runs alone, as a ModelServer without that sidecar does.

python bench/peer_apps/kserve_app.py PORT
"""
from __future__ import annotations

import base64
import sys

from bench.peer_apps.common import Classifier

PORT = sys.argv[1]
sys.argv = [sys.argv[0], "--http_port", PORT, "--workers", "1"]  # kserve reads its options from the command line

import kserve  # noqa: E402


class ImageModel(kserve.Model):
    def __init__(self) -> None:
        super().__init__("imgcls")
        self.clf = Classifier()
        self.ready = True

    async def predict(self, payload: dict, headers: dict | None = None) -> dict:
        blobs = [base64.b64decode(i["image"]["b64"]) for i in payload["instances"]]
        return {"predictions": self.clf.classify(blobs)}


if __name__ == "__main__":
    kserve.ModelServer(enable_grpc=False).start([ImageModel()])
