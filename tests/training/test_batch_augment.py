"""Batched on-device augmentation: right geometry, per-image draws, reproducible, and a real training run on an
in-memory (CIFAR-layout) dataset built from real photos."""
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT
from PIL import Image

from training.batch_augment import BatchAugment, crop_boxes, jitter, resample
from training.checkpoint import load
from training.config import AugmentConfig, ConfigError, load_config


def test_a_box_of_the_whole_image_resamples_to_the_image():
    x = torch.rand(3, 3, 20, 20)
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0]]).repeat(3, 1)
    torch.testing.assert_close(resample(x, boxes, 20), x, atol=1e-5, rtol=0)


def test_boxes_stay_inside_and_cover_the_asked_area():
    torch.manual_seed(0)
    b = crop_boxes(2000, 32, 48, (0.35, 1.0), "cpu")
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
    assert (b[:, 2] <= 48 + 1e-4).all() and (b[:, 3] <= 32 + 1e-4).all()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / (32 * 48)
    assert area.max() <= 1.0 + 1e-4 and area.min() >= 0.3  # clamping to the image may shave a little off 0.35
    assert area.std() > 0.1, "areas must vary from image to image"


def test_per_image_draws_reproducible_from_the_seed():
    aug = BatchAugment(24, AugmentConfig(rotation=0, color_jitter=0.3))
    img = torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8).repeat(6, 1, 1, 1)
    torch.manual_seed(5)
    a = aug(img)
    torch.manual_seed(5)
    b = aug(img)
    assert a.shape == (6, 3, 24, 24) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b), "the same seed must give the same batch (resume)"
    assert len({tuple(v.flatten()[:50].tolist()) for v in a}) == 6, "identical inputs, six different augmentations"


def test_zero_jitter_is_identity():
    x = torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(jitter(x, 0.0), x)


def test_config_refuses_what_the_device_path_cannot_do():
    with pytest.raises(ConfigError, match="rotation=0"):
        load_config(None, ["data.augment_on=device"], environ={})


@pytest.mark.slow
def test_training_on_an_in_memory_dataset_augmented_on_the_device(tmp_path, data_dir):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["ants", "bees"]}, f)
    for name, split in (("data_batch_1", "train"), ("test_batch", "val")):
        rows, labels = [], []
        for label, cls in enumerate(("ants", "bees")):
            for p in sorted((data_dir / split / cls).iterdir())[:40]:
                rows.append(np.asarray(Image.open(p).convert("RGB").resize((32, 32))).transpose(2, 0, 1).reshape(-1))
                labels.append(label)
        with open(root / name, "wb") as f:
            pickle.dump({"data": np.stack(rows), "labels": labels}, f)
    finals = []
    for out in ("run1", "run2"):
        run = subprocess.run([sys.executable, "-m", "training", "train", "--set", f"data.path={tmp_path}",
                              "--set", f"output_dir={tmp_path / out}", "--set", "export.enabled=false",
                              "--set", "data.augment_on=device", "--set", "augment.rotation=0",
                              "--set", "data.image_size=32", "--set", "data.resize_size=32",
                              "--set", "model.backbone=small_cnn", "--set", "model.weights=none",
                              "--set", "phase1.epochs=1", "--set", "phase2.epochs=2", "--set", "data.num_workers=0",
                              "--set", "threads=2"], cwd=ROOT, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        finals.append(load(tmp_path / out / "final" / "model.pt"))
    history = finals[0]["history"]
    assert [r["phase"] for r in history] == [1, 2, 2] and history[-1]["train_loss"] < history[0]["train_loss"]
    a, b = finals[0]["state_dict"], finals[1]["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), "device augmentation must be reproducible from the seed"
