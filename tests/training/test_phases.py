"""Phase 1 must not touch the backbone (weights nor BatchNorm statistics); phase 2 changes exactly the unfrozen
stages."""
import pytest
import torch

from training.config import load_config
from training.data import load_splits
from training.model import build_model
from training.runtime import setup_runtime
from training.train import Trainer


def _snapshot(model):
    state = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    return state


def _changed_stages(model, before):
    after = model.backbone.state_dict()
    by_tensor = {}
    for name, stage in model.stages.items():
        for t in list(stage.parameters()) + list(stage.buffers()):
            by_tensor[t.data_ptr()] = name
    changed = set()
    for k, v in after.items():
        if not torch.equal(v, before[k]):
            changed.add(by_tensor.get(v.data_ptr(), k))
    return changed


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("phases")
    cfg = load_config(None, [f"data.path={data_dir}", "data.image_size=64", "data.resize_size=64",
                             "data.limit_per_class=24", "data.batch_size=8", "data.num_workers=0",
                             "model.backbone=resnet50", "model.weights=none", "phase1.epochs=1", "phase2.epochs=1",
                             "phase2.unfreeze=layer3", "phase2.batchnorm=train", "threads=2",
                             f"output_dir={tmp}"], environ={})
    device = setup_runtime(cfg)
    splits = load_splits(cfg.data, cfg.seed)
    model = build_model(cfg.model, 2)
    return cfg, splits, model, device


def test_phase1_leaves_backbone_bit_identical_phase2_only_unfrozen(run):
    cfg, splits, model, device = run
    trainer = Trainer(cfg, splits, model, device)
    before = _snapshot(model)
    head_before = [p.clone() for p in model.head.parameters()]
    trainer.run_phase(1, None)
    assert _changed_stages(model, before) == set(), "phase 1 changed the frozen backbone"
    assert any(not torch.equal(a, b) for a, b in zip(head_before, model.head.parameters()))
    before = _snapshot(model)
    trainer.run_phase(2, None)
    assert _changed_stages(model, before) == {"layer3", "layer4"}


def test_gradual_unfreezing_plan():
    from training.optim import trainable_stages
    cfg = load_config(None, ["phase2.unfreeze=layer2", "phase2.gradual_every=2"], environ={})
    assert [trainable_stages(cfg, 2, e) for e in range(6)] == [
        ["layer4"], ["layer4"], ["layer4", "layer3"], ["layer4", "layer3"],
        ["layer4", "layer3", "layer2"], ["layer4", "layer3", "layer2"]]
    assert trainable_stages(cfg, 1, 0) == []


def test_fused_optimizer_default_on_cuda_only_and_settable():
    from training.config import load_config
    from training.model import build_model
    from training.optim import make_optimizer
    cfg = load_config(None, ["model.backbone=small_cnn", "model.weights=none"], environ={})
    model = build_model(cfg.model, 3)
    assert not make_optimizer(model, cfg, 1).defaults["fused"], "CPU default: the per-tensor loop"
    cfg = load_config(None, ["model.backbone=small_cnn", "model.weights=none", "fused_optimizer=true"], environ={})
    opt = make_optimizer(model, cfg, 2)
    assert opt.defaults["fused"]
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    opt.step()  # the fused kernel exists for CPU tensors too
