"""One served version per server start: a publish while the service starts never has two API workers serve two
versions (serving.artifact.pin_version resolves LATEST once, before the workers start)."""
from __future__ import annotations

import json
import re
import shutil
import time

import httpx
import pytest

from contract.publish import promote
from serving.launch import Server

pytestmark = pytest.mark.slow


def _wait_for_line(path, text: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"'{text}' never appeared in {path}:\n{path.read_text()[-2000:]}")


def test_a_publish_during_start_up_does_not_split_the_service(artifact, data_dir, tmp_path):
    root = tmp_path / "artifacts" / "bees"
    v1 = shutil.copytree(artifact, root / artifact.name)
    v2 = shutil.copytree(artifact, root / "v2-other")
    card = json.loads((v2 / "model.json").read_text())
    card.update(version="v2-other", classes=["wasps", "flies"])  # another model's card: a mix-up would show
    (v2 / "model.json").write_text(json.dumps(card))
    (root / "LATEST").write_text(v1.name + "\n")
    log = tmp_path / "serve.log"
    srv = Server({"SERVING_ARTIFACTS_ROOT": str(root.parent), "SERVING_MODEL_NAME": "bees",
                  "SERVING_API_WORKERS": "2"}, log)
    try:
        _wait_for_line(log, "model version directory for this start")
        promote(root, "v2-other")  # published the way training publishes
        assert srv.wait_ready(), log.read_text()[-3000:]
        info = httpx.post(srv.url + "/model_info", json={}).json()
        assert info["version"] == v1.name and info["classes"] == ["ants", "bees"]
        metrics = httpx.get(srv.url + "/metrics").text
        served = re.findall(r'imgcls_model_info\{[^}]*version="([^"]+)"', metrics)
        assert served == [v1.name], "every API worker must load the version pinned at start"
        photo = sorted((data_dir / "val" / "bees").iterdir())[0]
        answer = httpx.post(srv.url + "/predict", files={"image": (photo.name, photo.read_bytes())}).json()
        assert answer["version"] == v1.name and answer["label"] in ("ants", "bees")
    finally:
        srv.stop()
