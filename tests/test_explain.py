"""``ctta explain``: trait maps (shape, row sums), greedy head ranking, PNG outputs, the CLI on a checkpoint."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from ctta.strategies.promptcam import PromptCAMModel

from ctta.runner.explain import explain_images, rank_heads, render_map, trait_maps

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(img_size=32, patch_size=8, depth=3, embed_dim=24, num_heads=3)


def _model(n_classes: int = 4) -> PromptCAMModel:
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TINY)
    model = PromptCAMModel(vit, n_classes).eval()
    with torch.no_grad():
        model.prompts.normal_(0, 1.0)  # distinct class prompts, so heads differ
        model.head.weight.normal_(0, 1.0)
    return model


def test_maps_have_grid_shape_and_rows_sum_to_one():
    model, x = _model(), torch.randn(1, 3, 32, 32)
    maps, rest = trait_maps(model, x, 2)
    assert maps.shape == (3, 4, 4)  # heads x (32 / 8) x (32 / 8)
    torch.testing.assert_close(maps.sum((1, 2)) + rest, torch.ones(3))
    _, probs = model.forward_with_attention(x)
    torch.testing.assert_close(maps[1].flatten(), probs[0, 1, 2, 4 + 1 :])  # query row = class prompt 2


def test_rank_heads_is_the_greedy_blur_order_reversed():
    model, x, c = _model(), torch.randn(1, 3, 32, 32), 1
    ranked = rank_heads(model, x, c)
    assert sorted(ranked) == [0, 1, 2]

    def prob(blurred):
        return float(model.forward_with_attention(x, blurred, [c])[0].softmax(-1)[0, c])

    with torch.no_grad():  # brute force: first blurred = the head whose blurring alone leaves c most probable
        first = max(range(3), key=lambda h: prob([h]))
        second = max((h for h in range(3) if h != first), key=lambda h: prob([first, h]))
    assert ranked[::-1][:2] == [first, second]


def test_render_map_is_an_rgb_overlay_in_range():
    img = torch.rand(32, 32, 3).numpy()
    out = render_map(torch.rand(4, 4), img)
    assert out.shape == (32, 32, 3) and 0.0 <= out.min() and out.max() <= 1.0


def test_explain_images_writes_pngs_and_a_contact_sheet(tmp_path):
    recs = explain_images(_model(), torch.randn(2, 3, 32, 32), tmp_path, targets=[0, 3], top_traits=2)
    assert [r["target"] for r in recs] == [0, 3] and all(len(r["heads"]) == 2 for r in recs)
    for name in ("explain_0.png", "explain_1.png", "contact_sheet.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_explains_a_checkpoint_of_the_smoke_config(tmp_path, monkeypatch):
    from ctta.runner.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from ctta.backbones.vit import create_vit

    d = create_vit("ctta-tiny-vit").embed_dim
    torch.manual_seed(0)
    params = {"prompts": torch.randn(6, 10, d) * 0.1, "head.weight": torch.randn(1, d), "head.bias": torch.zeros(1)}
    state = {"model": params}
    ckpt = tmp_path / "ckpt.pt"
    torch.save(state, ckpt)
    cfg = ROOT / "configs/smoke/promptcam_digits.yaml"
    rc = main(["explain", str(cfg), f"log.out_dir={tmp_path / 'run'}", "--checkpoint", str(ckpt), "--images", "2",
               "--top-traits", "2", "--out", str(tmp_path / "maps")])  # fmt: skip
    assert rc == 0
    names = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert names == ["contact_sheet.png", "explain_0.png", "explain_1.png"]
    torch.save({"model": {"bogus": torch.zeros(1)}}, ckpt)
    assert main(["explain", str(cfg), f"log.out_dir={tmp_path / 'run'}", "--checkpoint", str(ckpt)]) == 2


def test_cli_explains_a_ctta_checkpoint_of_an_online_run(tmp_path):
    from ctta.runner.cli import main

    cfg = ROOT / "configs/smoke/promptcam_siblurry_digits.yaml"
    run = tmp_path / "run"
    assert main(["run", str(cfg), f"log.out_dir={run}", "log.checkpoint_every=1000", "log.progress=false"]) == 0
    ckpt = sorted((run / "checkpoints").glob("ckpt-*.pt"))[-1]  # verified through its JSON sidecar
    rc = main(["explain", str(cfg), f"log.out_dir={tmp_path / 'x'}", "--checkpoint", str(ckpt), "--images", "1",
               "--top-traits", "1", "--out", str(tmp_path / "maps")])  # fmt: skip
    assert rc == 0 and (tmp_path / "maps" / "contact_sheet.png").is_file()
