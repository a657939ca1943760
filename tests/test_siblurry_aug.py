"""Si-Blurry batch-shared training augmentation and test transform (spec si-blurry-mvp §3)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from ctta.data.siblurry_aug import SiBlurryTrainAugment, siblurry_test_transform

MEAN, STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


def tensor_images(n=5, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8).float() / 255  # ToTensor-like


@pytest.mark.parametrize("policy", ["cifar10", "imagenet"])
def test_one_random_draw_per_batch(policy):
    """Batch-shared: image i of an augmented batch equals image i augmented alone from the same RNG state."""
    aug = SiBlurryTrainAugment(MEAN, STD, policy, img_size=24)
    x = tensor_images()
    for seed in range(12):
        torch.manual_seed(seed)
        out = aug(x)  # (5, 3, 24, 24)
        assert out.shape == (5, 3, 24, 24)
        for i in range(len(x)):
            torch.manual_seed(seed)
            torch.testing.assert_close(out[i], aug(x[i : i + 1])[0], atol=1e-6, rtol=0)


def test_identical_images_stay_identical_only_when_shared():
    x = tensor_images(1).expand(16, -1, -1, -1).contiguous()
    shared = SiBlurryTrainAugment(MEAN, STD, "cifar10", img_size=16)
    per_sample = SiBlurryTrainAugment(MEAN, STD, "cifar10", img_size=16, per_sample_augmentation=True)
    torch.manual_seed(0)
    out = shared(x)
    assert all(torch.equal(out[0], o) for o in out)
    torch.manual_seed(0)
    out = per_sample(x)
    assert not all(torch.equal(out[0], o) for o in out)


def test_augmentation_is_redrawn_at_every_call():
    aug = SiBlurryTrainAugment(MEAN, STD, "cifar10", img_size=16)
    x = tensor_images(4)
    torch.manual_seed(0)
    outs = [aug(x) for _ in range(8)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_deterministic_pipeline_is_resize_then_normalize():
    aug = SiBlurryTrainAugment(MEAN, STD, None, img_size=32, random_crop_flip=False)
    x = tensor_images(3, 8)
    expected = T.Normalize(MEAN, STD)(T.Resize((32, 32))(x))
    torch.testing.assert_close(aug(x), expected)
    test_tf = siblurry_test_transform(MEAN, STD, img_size=32)
    torch.testing.assert_close(test_tf(x[0]), expected[0])


def test_test_transform_on_pil_images():
    arr = (tensor_images(1, 8)[0].permute(1, 2, 0) * 255).to(torch.uint8).numpy()
    img = Image.fromarray(arr)
    out = siblurry_test_transform(MEAN, STD, img_size=8)(img)  # same size: Resize is the identity
    expected = T.Normalize(MEAN, STD)(T.ToTensor()(img))
    torch.testing.assert_close(out, expected)


def test_bad_inputs():
    aug = SiBlurryTrainAugment(MEAN, STD, "cifar10", img_size=16)
    with pytest.raises(ValueError, match="batch"):
        aug(torch.rand(3, 16, 16))
    with pytest.raises(TypeError, match="float"):
        aug(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="channels"):
        SiBlurryTrainAugment((0.5, 0.5), STD)
    with pytest.raises(ValueError):
        SiBlurryTrainAugment(MEAN, STD, "mnist")
