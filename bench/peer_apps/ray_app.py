"""Ray Serve: one replica with Ray Serve's own batching (@serve.batch, as its documentation sets it up) and
max_ongoing_requests raised above the batch size (its default of 5 would cap every batch at 5); images arrive as
multipart uploads on /predict and are decoded in the replica, which then awaits its batch.

python bench/peer_apps/ray_app.py PORT MAX_BATCH BATCH_TIMEOUT_S
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import ray
from ray import serve
from starlette.requests import Request

from bench.peer_apps.common import Classifier

PORT, BATCH, TIMEOUT = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])


@serve.deployment(num_replicas=1, max_ongoing_requests=4 * BATCH)
class ImageClassifier:
    def __init__(self) -> None:
        self.clf = Classifier()

    @serve.batch(max_batch_size=BATCH, batch_wait_timeout_s=TIMEOUT)
    async def classify(self, pixels: list[np.ndarray]) -> list[dict]:
        return self.clf.answers(np.stack(pixels))

    async def __call__(self, request: Request) -> dict:
        form = await request.form()
        return await self.classify(self.clf.pixels(await form["image"].read()))


if __name__ == "__main__":
    ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", ""),
                                       "IMGCLS_MODEL_DIR": os.environ["IMGCLS_MODEL_DIR"]}})
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    serve.run(ImageClassifier.bind(), route_prefix="/predict")
    while True:
        time.sleep(3600)
