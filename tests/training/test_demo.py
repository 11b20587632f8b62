"""`python -m training demo --data DIR` on a dataset laid out unlike the default one (failure 2 of issue 14): its own
run directory and artifact, photos from the test split it trained on, answered over HTTP by the real service."""
import json
import shutil
import subprocess
import sys

import pytest

from training.demo import dataset_name

pytestmark = pytest.mark.slow
QUICK = ["data.image_size=64", "data.resize_size=73", "data.num_workers=0", "data.batch_size=16",
         "phase1.epochs=1", "phase2.epochs=1", "threads=2",
         "export.majority_significance=1"]  # 12 test images after one epoch: the gate's own test is elsewhere


def test_dataset_name():
    assert dataset_name("/data/Cats and Dogs/") == "cats-and-dogs"
    assert dataset_name("../x/_Labels.v2") == "labels.v2"


def test_demo_on_other_data_trains_its_own_run_and_asks_with_its_test_split(tmp_path, data_dir):
    data = tmp_path / "Cats_And_Dogs"
    for split, src, n in (("training_set", "train", 24), ("test_set", "val", 6)):
        for label in ("ants", "bees"):
            (data / split / split / label).mkdir(parents=True)  # Kaggle's doubled folder
            for p in sorted((data_dir / src / label).glob("*.jpg"))[:n]:
                shutil.copy(p, data / split / split / label / p.name)
    previous = tmp_path / "runs" / "hymenoptera"  # the default demo ran here before
    previous.mkdir(parents=True)
    (previous / "run.json").write_text("{}")
    done = subprocess.run([sys.executable, "-m", "training", "demo", "--data", str(data),
                           *[a for s in QUICK for a in ("--set", s)]],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    run = tmp_path / "runs" / "cats_and_dogs"
    assert json.loads((run / "run.json").read_text())["layout"] == \
        "split folders (train=training_set/training_set, test=test_set/test_set)"
    assert (previous / "run.json").read_text() == "{}", "another dataset's run is never touched"
    assert (tmp_path / "artifacts" / "cats_and_dogs" / "LATEST").is_file()
    asked = [line for line in done.stdout.splitlines() if line.startswith("  ") and "version" in line]
    assert len(asked) == 6  # 3 per class
    assert all(line.split("/")[1].split(":")[0] in {p.name for p in data.rglob("test_set/*/*.jpg")}
               for line in asked), "the photos must come from the test split it trained on"
    assert "answered correctly over HTTP" in done.stdout
