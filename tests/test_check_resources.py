"""User-supplied files fail fast: ``StrategyBase.check_resources`` runs in ``prepare`` before data, weights or the
output folder (description banks, GLOV's prompt file, IPO's image descriptions, replay logs, ``hf:`` folders,
``openai:`` keys)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctta.registry import STRATEGIES
from ctta.runner import run as run_mod
from ctta.runner.cli import main as cli_main
from ctta.runner.config import load_config

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke"
MISSING = "/nonexistent/ctta_check_resources"

# (smoke config, strategy overrides, exception, message fragment); {tmp} is an empty folder
CASES = [
    ("cupl_digits", [f"descriptions={MISSING}/cupl.json"], FileNotFoundError, "description file"),
    ("cupl_digits", ["descriptions={tmp}", "dataset=dtd"], FileNotFoundError, "sarahpratt/CuPL"),
    ("cupl_digits_llm", [f"llm_log={MISSING}.jsonl"], FileNotFoundError, "replay log"),
    ("cupl_digits_llm", ["llm=hf:./no_such_folder/model"], FileNotFoundError, "no such folder"),
    ("fudd_digits", ["descriptions={tmp}", "dataset=dtd"], FileNotFoundError, "FuDD description file"),
    ("glov_digits", [f"prompts={MISSING}/discovered_prompts.py"], FileNotFoundError, "GLOV prompt file"),
    ("glov_search_digits", [f"llm_log={MISSING}.jsonl"], FileNotFoundError, "replay log"),
    ("glov_search_digits", [f"meta_prompt_file={MISSING}.json"], FileNotFoundError, "meta-prompt file"),
    ("ipo_digits", ["image_descriptions={tmp}", "dataset=dtd"], FileNotFoundError, "dtd_1_shot_image.txt"),
    ("ipo_digits", ["llm=openai:gpt-3.5-turbo", "llm_api_key_env=CTTA_TEST_NO_KEY"], ValueError, "CTTA_TEST_NO_KEY"),
    ("ipo_digits", ["llm_log="], ValueError, "needs a log file"),
    ("llm_optimizer_digits", [f"init_templates={MISSING}.txt"], FileNotFoundError, "template file"),
    ("pacbayes_digits", [f"prior=hf:{MISSING}/lm"], FileNotFoundError, "no such folder"),
    ("pacbayes_digits", [f"vocab_file={MISSING}.txt"], FileNotFoundError, "vocab_file"),
    ("proapo_digits", [f"descriptions={MISSING}.json"], FileNotFoundError, "ProAPO"),
    ("proapo_digits", ["templates=no_such_pool"], FileNotFoundError, "template pool"),
]


@pytest.fixture
def nothing_loads(monkeypatch):
    """Building data, backbone or strategy, or writing the output folder, fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("prepare went past its checks: a builder or the output folder was reached")

    monkeypatch.setattr(run_mod, "_build", refuse)
    monkeypatch.setattr(run_mod, "begin", refuse)
    monkeypatch.delenv("CTTA_TEST_NO_KEY", raising=False)


def _config(name: str, strategy_overrides, tmp_path: Path, out: Path):
    empty = tmp_path / "empty"
    empty.mkdir(exist_ok=True)
    ovr = [f"strategy.{o.format(tmp=empty)}" for o in strategy_overrides]
    return load_config(SMOKE / f"{name}.yaml", [*ovr, f"log.out_dir={out}"])


@pytest.mark.parametrize("name, overrides, error, fragment", CASES, ids=[f"{c[0]}-{c[1][0][:20]}" for c in CASES])
def test_missing_file_fails_in_prepare(name, overrides, error, fragment, tmp_path, nothing_loads):
    out = tmp_path / "run"
    cfg = _config(name, overrides, tmp_path, out)
    with pytest.raises(error, match=fragment.replace(".", r"\.")):
        run_mod.prepare(cfg)
    assert not out.exists()


def test_cli_one_line_exit_2_no_folder(tmp_path, capsys, nothing_loads):
    out = tmp_path / "run"
    code = cli_main(["run", str(SMOKE / "glov_digits.yaml"), f"strategy.prompts={MISSING}.py", f"log.out_dir={out}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("ctta: GLOV prompt file") and "jmiemirza/GLOV" in err and len(err.splitlines()) == 1
    assert not out.exists()


def _write(path: Path, data) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return str(path)


def _present(tmp_path: Path) -> list[tuple[str, list[str]]]:
    """Configs naming files that exist (folders resolved through ``dataset`` as the loaders do)."""
    bank = _write(tmp_path / "bank.json", {"0": ["a zero."]})
    fudd = tmp_path / "fudd" / "differential_descriptions"
    _write(fudd / "dtd_prompt_pairs.json", {})
    _write(fudd / "dtd_class_names.json", ["a"])
    ipo = tmp_path / "ipo"
    _write(ipo / "dtd_1_shot_image.txt", "textures")
    model = tmp_path / "models" / "lm"
    model.mkdir(parents=True)
    return [
        ("cupl_digits", [f"descriptions={bank}", "description_format=json"]),
        ("cupl_digits_llm", [f"llm=hf:{model}"]),
        ("fudd_digits", [f"descriptions={tmp_path / 'fudd'}", "dataset=dtd"]),
        ("glov_digits", []),
        ("glov_search_digits", []),
        ("ipo_digits", [f"image_descriptions={ipo}", "dataset=dtd"]),
        ("ipo_digits", ["llm=openai:gpt-3.5-turbo", "llm_api_key_env=CTTA_TEST_KEY"]),
        ("ipo_digits", ["llm=openai:local-model", "llm_api_key_env=CTTA_TEST_NO_KEY", "llm_base_url=http://x:1/v1"]),
        ("llm_optimizer_digits", []),
        ("pacbayes_digits", ["prior=hf:openai-community/gpt2"]),  # a hub id: resolved when it loads
        ("pacbayes_digits", [f"prior=hf:{model}"]),
        ("proapo_digits", [f"descriptions={bank}"]),
    ]


def test_present_files_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("CTTA_TEST_KEY", "secret")
    monkeypatch.delenv("CTTA_TEST_NO_KEY", raising=False)
    for name, overrides in _present(tmp_path):
        cfg = _config(name, overrides, tmp_path, tmp_path / "run")
        STRATEGIES.get(cfg.strategy.name).builder.check_resources(cfg.strategy.params)  # raises on a failure


def test_default_checks_nothing(tmp_path):
    cfg = load_config(SMOKE / "coop_digits.yaml", [f"log.out_dir={tmp_path / 'run'}"])
    assert STRATEGIES.get("coop").builder.check_resources(cfg.strategy.params) is None
