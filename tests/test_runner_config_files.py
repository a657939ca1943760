"""Config files: ``_base_`` inheritance (nested merge, child wins, errors name the file), method+protocol files
composed with a dataset on the command line (``_datasets_``), the derived output folder, and every shipped config."""

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from ctta.runner.compose import default_out_dir
from ctta.runner.config import ConfigError, dump_config, load_config, read_yaml, to_dict
from tests.helpers import ROOT, shipped_config_cases

CASES = shipped_config_cases()  # every shipped config, once per dataset it lists under _datasets_ (or None)


@pytest.mark.parametrize(
    ("path", "dataset"), CASES, ids=[f"{p.relative_to(ROOT / 'configs')}:{d or '-'}" for p, d in CASES]
)
def test_every_shipped_config_loads(path, dataset):
    cfg = load_config(path, [f"scenario.dataset={dataset}"] if dataset else [])
    assert cfg.strategy.name and cfg.scenario.name and cfg.backbone.name
    if dataset:
        assert cfg.scenario.params.dataset == dataset


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


def _values(cfg) -> dict:
    d = to_dict(cfg)
    d["log"].pop("out_dir")
    return d


@pytest.mark.parametrize(
    ("name", "old"), [("tpt", OLD_TPT_DTD), ("zeroshot", OLD_ZEROSHOT_DTD), ("difftpt", OLD_DIFFTPT_DTD)]
)
def test_method_files_rebuild_the_former_copies(name, old):
    new = load_config(ROOT / "configs" / f"{name}.yaml", ["scenario.dataset=dtd"])
    assert _values(new) == _values(load_config(yaml.safe_load(old)))
    assert new.log.out_dir == f"runs/{name}/dtd/seed0"  # derived: the former copies named runs/{name}_dtd


def test_a_method_file_without_its_dataset_names_scenario_dataset_and_the_valid_values():
    with pytest.raises(ConfigError, match=r"tpt\.yaml needs a dataset.*scenario\.dataset=NAME.*valid values: "
                                          r"aircraft, caltech101, cars, dtd, .*, ucf101$"):  # fmt: skip
        load_config(ROOT / "configs" / "tpt.yaml")
    with pytest.raises(ConfigError, match=r"scenario\.dataset: 'cifar10' is not a dataset of .*tpt_coop\.yaml; "
                                          r"valid values: imagenet, imagenet_a, imagenet_r, imagenet_sketch, "
                                          r"imagenet_v2"):  # fmt: skip
        load_config(ROOT / "configs" / "tpt_coop.yaml", ["scenario.dataset=cifar10"])


def test_a_datasets_own_settings_apply_and_the_command_line_wins():
    path = ROOT / "configs" / "dualprompt_siblurry.yaml"
    assert load_config(path, ["scenario.dataset=cifar100"]).strategy.params.memory_size == 0
    r = load_config(path, ["scenario.dataset=imagenet_r"])
    assert (r.strategy.params.memory_size, r.scenario.params.imagenet_r_test_center_crop) == (2000, False)
    assert load_config(path, ["scenario.dataset=imagenet_r", "strategy.memory_size=0"]).strategy.params.memory_size == 0


def test_datasets_lists_merge_through_bases_and_bad_values_raise(tmp_path):
    _write(tmp_path / "b.yaml", "_datasets_: {a: {}, b: {seed: 3}}\nscenario: {name: si_blurry}\n")
    child = _write(tmp_path / "c.yaml", "_base_: b.yaml\n_datasets_: {b: {seed: 5}, c: {}}\n")
    assert read_yaml(child)["_datasets_"] == {"a": {}, "b": {"seed": 5}, "c": {}}
    with pytest.raises(ConfigError, match=r"c\.yaml needs a dataset.*valid values: a, b, c$"):
        load_config(child)
    with pytest.raises(ConfigError, match="_datasets_ must map each dataset name to its own settings"):
        load_config(_write(tmp_path / "bad.yaml", "_datasets_: [a, b]\n"), ["scenario.dataset=a"])


def test_out_dir_is_derived_from_the_run_unless_set(tmp_path):
    path = ROOT / "configs" / "fewshot" / "coop_b2n.yaml"
    assert load_config(path, ["scenario.dataset=dtd", "seed=3"]).log.out_dir == "runs/coop_b2n/dtd/seed3"
    assert load_config(path, ["scenario.dataset=dtd", "log.out_dir=x/y"]).log.out_dir == "x/y"
    kept = ROOT / "configs" / "fewshot" / "coop_xd.yaml"  # a fixed run may name its folder
    assert load_config(kept).log.out_dir == "runs/fewshot/coop_xd_imagenet"
    mapping = {"scenario": {"name": "si_blurry", "dataset": "digits"}, "backbone": {"name": "vit"},
               "strategy": {"name": "vpt"}, "seed": 2}  # fmt: skip
    assert load_config(mapping).log.out_dir == "runs/vpt/digits/seed2"  # no file: the strategy's name
    stream = load_config(ROOT / "configs" / "damvp_vitb1k_stream.yaml")
    params = replace(stream.scenario.params, datasets=("a", "b"))
    stream = replace(stream, scenario=replace(stream.scenario, params=params))
    assert default_out_dir(stream, "s") == "runs/s/a+b/seed2023"  # a stream of datasets: joined


@pytest.mark.slow
def test_every_former_leaf_config_resolves_identically_through_its_method_file():
    """benchmarks/config_equivalence.py against the commit before configs were composed (163 former leaves)."""
    rev = "9e51bd9"
    if subprocess.run(["git", "cat-file", "-e", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip(f"git history without {rev}")
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "config_equivalence.py"), "--rev", rev],
                         cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("163 of 163 former leaf configs (this loader) resolve identically")


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
    cfg = load_config(ROOT / "configs" / "tpt.yaml", ["scenario.dataset=dtd", "scenario.n_views=8"])
    dump_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "_base_" not in text and "n_views: 8" in text
    assert to_dict(load_config(tmp_path / "config.yaml")) == to_dict(cfg)


def test_fixed_length_tuple_values_convert_item_by_item():
    cfg = load_config(ROOT / "configs" / "tpt.yaml", ["scenario.dataset=dtd", "strategy.betas=[0.8, '0.99']"])
    assert cfg.strategy.params.betas == (0.8, 0.99)  # was (float, float): the classes, not the values
    with pytest.raises(ConfigError, match=r"strategy.betas: expected 2 items"):
        load_config(ROOT / "configs" / "tpt.yaml", ["scenario.dataset=dtd", "strategy.betas=[0.8]"])


def _readme_runs() -> list[tuple[str, list[str]]]:
    text = (ROOT / "README.md").read_text()
    runs = []
    for m in re.finditer(r"ctta run (configs/\S+\.yaml)((?: [\w.]+=[^\s`]+)*)", text):
        runs.append((m.group(1), m.group(2).split()))
    return runs


@pytest.mark.parametrize(("path", "overrides"), _readme_runs(), ids=lambda v: str(v))
def test_every_config_command_in_the_readme_resolves(path, overrides):
    """The README's one-line paper runs name files that exist and the overrides they need (the dataset)."""
    assert load_config(ROOT / path, overrides).strategy.name
