"""Really build Dockerfile.train with buildah (tests/oci.py) and run it: torch and torchvision as .ci/setup pins them,
cuDNN available, and a tiny ResNet50 run (64 px, a few steps, CPU) from the weights installed at build time trains,
evaluates and exports ONNX to the end."""
from __future__ import annotations

import os

import pytest
from helpers import ROOT, copy_images
from oci import Image, image_fixture, run

pytestmark = pytest.mark.slow
TRAIN = "localhost/imgcls-train:test"
WEIGHTS = ROOT / ".cache" / "weights" / "resnet50-test.pth"  # inside the build context (.dockerignore lets it in)


def write_weights() -> None:
    import torch
    from torchvision import models
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    torch.save(models.resnet50().state_dict(), WEIGHTS)  # random, but a real ResNet50 file: this machine is offline


IMAGE_BUILD = Image("train", "Dockerfile.train", TRAIN, (f"RESNET50_WEIGHTS={WEIGHTS.relative_to(ROOT)}",),
                    need_gb=25, prepare=write_weights)
train_image = image_fixture(IMAGE_BUILD)


def test_training_image_trains_and_exports_on_the_pinned_torch(train_image, data_dir, tmp_path):
    data = tmp_path / "data"
    for split in ("train", "val"):
        for c in ("ants", "bees"):
            copy_images(data_dir / split / c, data / split / c, 12)
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o777)  # the image runs as uid 10001
    settings = ["data.path=/data", "output_dir=/out/run", "artifacts_dir=/out/artifacts", "name=tiny",
                "model.backbone=resnet50", "data.image_size=64", "data.resize_size=73", "data.num_workers=0",
                "data.batch_size=8", "phase1.epochs=1", "phase2.epochs=1", "threads=2", "device=cpu",
                "export.majority_significance=1",  # one epoch at 64 px: the image is under test, not the model
                "export.int8=false"]  # 27 of the run's 40 s; tests/training/test_int8.py quantizes on the same stack
    script = ("python -c 'import torch, torchvision; print(\"STACK\", torch.__version__, torchvision.__version__, "
              "torch.backends.cudnn.is_available(), torch.version.cuda)' && exec dumb-init -- python -m training "
              "train " + " ".join(f"--set {s}" for s in settings))
    proc = run(train_image, TRAIN, "-c", script, entrypoint="sh", volumes=(f"{data}:/data:ro", f"{out}:/out"),
               timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stack = next(line for line in proc.stdout.splitlines() if line.startswith("STACK")).split()
    setup = (ROOT / ".ci" / "setup").read_text()
    assert f"torch=={stack[1].split('+')[0]}" in setup and f"torchvision=={stack[2].split('+')[0]}" in setup, stack
    assert stack[3] == "True" and stack[4].startswith("13"), f"cuDNN / CUDA 13 missing from the image: {stack}"
    versions = [p for p in (out / "artifacts" / "tiny").iterdir() if p.is_dir()]
    assert len(versions) == 1 and {"model.onnx", "model.json"} <= {p.name for p in versions[0].iterdir()}
    assert (out / "artifacts" / "tiny" / "LATEST").read_text().strip() == versions[0].name
