"""The phase-1 feature cache holds exactly what the frozen backbone computes, and is used only where it is valid."""
import torch

from training.config import load_config
from training.data import load_splits
from training.feature_cache import build, cache_key, unusable_because
from training.model import build_model
from training.transforms import eval_transform

BASE = ["data.image_size=48", "data.resize_size=56", "data.limit_per_class=12", "data.num_workers=0",
        "model.backbone=efficientnet_lite0", "phase1.epochs=5", "phase1.cache_views=2", "augment.mixup_alpha=0"]


def _cfg(data_dir, *extra):
    return load_config(None, BASE + [f"data.path={data_dir}", *extra], environ={})


def test_cached_features_equal_the_backbone_on_the_same_input(data_dir):
    cfg = _cfg(data_dir)
    splits = load_splits(cfg.data, cfg.seed)
    model = build_model(cfg.model, len(splits.classes)).eval()
    cache = build(model, splits, cfg, torch.device("cpu"), None)
    assert cache.train.shape[:2] == (2, len(splits.train)) and cache.val.shape[0] == len(splits.val)
    assert not torch.equal(cache.train[0], cache.train[1]), "two views must be two different augmentations"
    tf = eval_transform(cfg.data.spec)
    x = torch.stack([tf(splits.val.source(i)) for i in range(4)]).float() / 255
    with torch.no_grad():
        direct = model.backbone((x.contiguous(memory_format=torch.channels_last) - model.mean) / model.std)
    torch.testing.assert_close(cache.val[:4], direct, rtol=1e-4, atol=1e-5)
    assert cache.val_labels[:4].tolist() == splits.val.labels[:4]


def test_used_only_where_valid_and_keyed_by_what_changes_features(data_dir):
    assert unusable_because(_cfg(data_dir), world=1) is None
    assert "MixUp" in unusable_because(_cfg(data_dir, "augment.mixup_alpha=0.2"), world=1)
    assert "distributed" in unusable_because(_cfg(data_dir), world=2)
    assert "would not save time" in unusable_because(_cfg(data_dir, "phase1.epochs=2"), world=1)
    assert unusable_because(_cfg(data_dir, "phase1.epochs=2", "phase1.feature_cache=always"), world=1) is None
    assert "never" in unusable_because(_cfg(data_dir, "phase1.feature_cache=never"), world=1)
    cfg = _cfg(data_dir)
    splits = load_splits(cfg.data, cfg.seed)
    key = cache_key(cfg, splits)
    assert cache_key(_cfg(data_dir, "augment.hflip=false"), splits) != key
    assert cache_key(_cfg(data_dir, "seed=1"), load_splits(cfg.data, 1)) != key
    assert cache_key(_cfg(data_dir, "phase1.lr=0.5"), splits) == key, "head settings do not change features"
    for head_or_loss in ("model.dropout=0.5", "model.hidden_dim=64", "augment.label_smoothing=0.0",
                         "data.balance=loss_weights", "data.batch_size=7"):
        assert cache_key(_cfg(data_dir, head_or_loss), splits) == key, head_or_loss
    for pixels in ("data.image_size=40", "augment.color_jitter=0.4", "model.backbone=resnet50"):
        assert cache_key(_cfg(data_dir, pixels), splits) != key, pixels
