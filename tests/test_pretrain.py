"""The backbone stage: pretraining the demo CLIP (settings, determinism, reuse, loading the result), and
resolving weights for the paper grid."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from prompt_ot.errors import UserError
from prompt_ot.pretrain import PretrainConfig
from tests.support.params import as_yaml, shrunk_params
from tests.support.workflow import ROOT, quiet_env


def test_pretrain_settings_are_checked():
    assert PretrainConfig.from_params({"datasets": ["digits"]}).epochs == 3
    with pytest.raises(UserError, match="unknown key"):
        PretrainConfig.from_params({"datasets": ["digits"], "epoch": 2})
    with pytest.raises(UserError, match="pretrain.datasets is empty"):
        PretrainConfig.from_params({"datasets": []})
    with pytest.raises(UserError, match="exactly once"):
        PretrainConfig.from_params({"datasets": ["digits"], "templates": ["a photo"]})
    a = PretrainConfig.from_params({"datasets": ["digits"]})
    b = PretrainConfig.from_params({"datasets": ["digits"], "epochs": 4})
    assert a.fingerprint("demo-vit") != b.fingerprint("demo-vit") != a.fingerprint("tiny-vit")


def _workspace(tmp_path, epochs=1):
    """The demo's params with the tiny CLIP pretrained briefly on the digits."""
    backbone = {"name": "tiny-vit", "pretrained": "runs/backbone/tiny-vit.safetensors"}
    pretrain = {"datasets": ["digits"], "epochs": epochs, "batch_size": 128, "repeat": {"digits": 1}}
    (tmp_path / "params.yaml").write_text(as_yaml(shrunk_params(backbone=backbone, pretrain=pretrain)))
    return tmp_path


def _stage(folder, *args):
    cmd = [sys.executable, "-m", "prompt_ot", *args]
    return subprocess.run(cmd, cwd=folder, capture_output=True, text=True, env=quiet_env())


def test_backbone_stage_pretrains_once_and_the_checkpoint_loads(tmp_path):
    folder = _workspace(tmp_path)
    assert _stage(folder, "download", "digits", "--root", "data").returncode == 0
    first = _stage(folder, "backbone", "--params", "params.yaml", "--root", "data", "--out", "runs/backbone")
    assert first.returncode == 0, first.stderr
    record = json.loads((folder / "runs/backbone/backbone.json").read_text())
    assert record["pretrained_here"] and set(record["zero_shot_accuracy"]) == {"digits"}
    assert record["steps"] == 1085 // 128
    checkpoint = folder / "runs/backbone/tiny-vit.safetensors"
    stamp = checkpoint.stat().st_mtime_ns
    second = _stage(folder, "backbone", "--params", "params.yaml", "--root", "data", "--out", "runs/backbone")
    assert second.returncode == 0 and "nothing to do" in second.stdout
    assert checkpoint.stat().st_mtime_ns == stamp

    from prompt_ot.models.backbone import load_backbone

    trained, _, _ = load_backbone("tiny-vit", str(checkpoint))
    random, _, _ = load_backbone("tiny-vit", None)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), random.state_dict().values()))

    # the same pretraining in another folder writes the same bytes (test_e2e's DVC run takes the grid's backbone)
    again = tmp_path / "again"
    again.mkdir()
    shutil.copy2(folder / "params.yaml", again / "params.yaml")
    shutil.copytree(folder / "data", again / "data")
    assert (
        _stage(again, "backbone", "--params", "params.yaml", "--root", "data", "--out", "runs/backbone").returncode == 0
    )
    assert (again / "runs/backbone/tiny-vit.safetensors").read_bytes() == checkpoint.read_bytes()


def test_backbone_stage_refuses_a_pretrained_path_it_does_not_write(tmp_path):
    folder = _workspace(tmp_path)
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["backbone"]["pretrained"] = "elsewhere.safetensors"
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    result = _stage(folder, "backbone", "--params", "params.yaml", "--root", "data", "--out", "runs/backbone")
    assert result.returncode == 2 and "must name the file this stage writes" in result.stderr


def test_backbone_stage_without_pretraining_records_the_weights(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["backbone"] = {"name": "tiny-vit", "pretrained": "none"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = _stage(tmp_path, "backbone", "--params", "params.yaml", "--out", "runs/backbone")
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "runs/backbone/backbone.json").read_text())
    assert record == {"backbone": "tiny-vit", "pretrained": "none", "weights": None, "pretrained_here": False}
    params["backbone"] = {"name": "ViT-B-16-quickgelu", "pretrained": "openai"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    offline = _stage(tmp_path, "backbone", "--params", "params.yaml", "--out", "runs/backbone")
    assert offline.returncode == 2 and "local checkpoint file" in offline.stderr


def test_pretraining_views_are_the_prompt_learners_crops_resized_back():
    """``crops: true``: each image becomes the random resized crop that ``crop_box`` draws (the downstream training
    views' scale and aspect ranges), resized back to the input size, flipped when the next draw is below 1/2."""
    import numpy as np
    from torchvision.transforms.v2 import functional as TF

    from prompt_ot.data.augment import crop_box
    from prompt_ot.pretrain import random_views

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8, generator=gen)
    views = random_views(images, np.random.default_rng(7))
    assert views.shape == images.shape and views.dtype == torch.uint8
    assert torch.equal(views, random_views(images, np.random.default_rng(7)))  # the same draws, the same views
    rng = np.random.default_rng(7)
    for image, view in zip(images.permute(0, 3, 1, 2), views.permute(0, 3, 1, 2), strict=True):
        top, left, h, w = crop_box(32, 32, rng)
        expected = TF.resized_crop(image, top, left, h, w, [32, 32], antialias=True)
        if rng.random() < 0.5:
            expected = expected.flip(-1)
        assert torch.equal(view, expected)
    # a flat image stays flat whatever the crop
    flat = torch.full((2, 32, 32, 3), 200, dtype=torch.uint8)
    assert torch.equal(random_views(flat, np.random.default_rng(1)), flat)
    # crops are recorded in the fingerprint: a backbone pretrained with them is another backbone
    config = PretrainConfig(datasets=("digits",))
    crops = PretrainConfig(datasets=("digits",), crops=True)
    assert config.fingerprint("demo-vit") != crops.fingerprint("demo-vit")
