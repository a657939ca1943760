"""Config files: ``_base_`` inheritance (nested merge, child wins, errors name the file) and every shipped config."""

from pathlib import Path

import pytest
import yaml

from ctta.runner.config import ConfigError, dump_config, load_config, read_yaml, to_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "_base" not in p.parts)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.strategy.name and cfg.scenario.name and cfg.backbone.name


# What three of the former near-copies held, verbatim (commit 2af43a8); the base files must rebuild them exactly.
OLD_TPT_DTD = """
seed: 0
device: auto
scenario: {name: test_time, dataset: dtd, root: data, n_views: 64, augmentation: auto, resolution: 224}
backbone: {name: clip, model: ViT-B-16, pretrained: openai}
strategy: {name: tpt, ctx_init: a photo of a, lr: 0.005, weight_decay: 0.01, tta_steps: 1, selection_p: 0.1,
           episodic: true}
log: {out_dir: runs/tpt_dtd}
"""
OLD_ZEROSHOT_DTD = """
seed: 0
device: auto
scenario: {name: test_time, dataset: dtd, root: data, n_views: 1, resolution: 224, shuffle: false}
backbone: {name: clip, model: ViT-B-16, pretrained: openai}
strategy: {name: tpt, ctx_init: a photo of a, tta_steps: 0, episode_batch: 64}
log: {out_dir: runs/zeroshot_dtd}
"""
OLD_DIFFTPT_DTD = """
seed: 0
device: auto
scenario: {name: test_time, dataset: dtd, root: data, n_views: 65, augmentation: auto, resolution: 224,
           subset: difftpt_1k}
backbone: {name: clip, model: ViT-B-16, pretrained: openai}
strategy:
  name: difftpt
  tta_steps: 4
  lr: 0.005
  n_diffusion_views: 63
  selection_cosine: 0.8
  selection_selfentro: 0.3
  cosine_space: logits
  filter_scope: pooled
  episodic: true
  diffusion: {model: lambdalabs/sd-image-variations-diffusers, revision: v2.0, dtype: float32,
              guidance_scale: 3.0, num_inference_steps: 50, seed: 0, cache_format: jpeg, jpeg_quality: 75}
log: {out_dir: runs/difftpt_dtd}
"""


@pytest.mark.parametrize(
    ("name", "old"), [("tpt_dtd", OLD_TPT_DTD), ("zeroshot_dtd", OLD_ZEROSHOT_DTD), ("difftpt_dtd", OLD_DIFFTPT_DTD)]
)
def test_base_configs_rebuild_the_former_copies(name, old):
    assert read_yaml(ROOT / "configs" / f"{name}.yaml") == yaml.safe_load(old)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_nested_merge_child_wins(tmp_path):
    _write(tmp_path / "b" / "a.yaml", "seed: 3\nstrategy: {name: vpt, lr: 0.1, prompt_length: 5}\nlog: {plot: false}\n")
    _write(tmp_path / "b" / "b.yaml", "strategy: {lr: 0.2}\nscenario: {name: si_blurry, dataset: digits}\n")
    child = _write(
        tmp_path / "run.yaml",
        "_base_: [b/a.yaml, b/b.yaml]\nbackbone: {name: vit_tiny}\nstrategy: {prompt_length: 7}\nseed: 4\n",
    )
    assert read_yaml(child) == {
        "seed": 4,
        "strategy": {"name": "vpt", "lr": 0.2, "prompt_length": 7},
        "log": {"plot": False},
        "scenario": {"name": "si_blurry", "dataset": "digits"},
        "backbone": {"name": "vit_tiny"},
    }


def test_base_lists_are_replaced_not_appended(tmp_path):
    _write(tmp_path / "base.yaml", "scenario: {severities: [1, 2, 3]}\n")
    child = _write(tmp_path / "c.yaml", "_base_: base.yaml\nscenario: {severities: [5]}\n")
    assert read_yaml(child) == {"scenario": {"severities": [5]}}


def test_base_cycle_names_the_files(tmp_path):
    _write(tmp_path / "a.yaml", "_base_: b.yaml\nseed: 1\n")
    _write(tmp_path / "b.yaml", "_base_: a.yaml\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"cycle.*a\.yaml.*b\.yaml"):
        load_config(tmp_path / "a.yaml")


def test_missing_base_names_the_file(tmp_path):
    child = _write(tmp_path / "c.yaml", "_base_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere\.yaml.*base of .*c\.yaml"):
        load_config(child)


def test_bad_base_value_and_yaml_syntax_error_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml: _base_ must be a path"):
        load_config(_write(tmp_path / "c.yaml", "_base_: {a: 1}\n"))
    with pytest.raises(ConfigError, match=r"broken\.yaml.*not valid YAML"):
        load_config(_write(tmp_path / "broken.yaml", "seed: [1, 2\n"))
    with pytest.raises(ConfigError, match="only understood in config files"):
        load_config({"_base_": "x.yaml"})


def test_resolved_config_is_written_and_reloads_identically(tmp_path):
    cfg = load_config(ROOT / "configs" / "tpt_dtd.yaml", ["scenario.n_views=8"])
    dump_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "_base_" not in text and "n_views: 8" in text
    assert to_dict(load_config(tmp_path / "config.yaml")) == to_dict(cfg)


def test_fixed_length_tuple_values_convert_item_by_item():
    cfg = load_config(ROOT / "configs" / "tpt_dtd.yaml", ["strategy.betas=[0.8, '0.99']"])
    assert cfg.strategy.params.betas == (0.8, 0.99)  # was (float, float): the classes, not the values
    with pytest.raises(ConfigError, match=r"strategy.betas: expected 2 items"):
        load_config(ROOT / "configs" / "tpt_dtd.yaml", ["strategy.betas=[0.8]"])
