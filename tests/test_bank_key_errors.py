"""A description bank or GLOV prompt file without the run's classes / dataset: ``ctta run`` prints the one-line
message (it was a ``KeyError`` traceback, exit code 1), and GLOV's hint names a key that exists
(``strategy.dataset``; it named ``prompts_key``, which no config has)."""

import pytest

from ctta.clip_prompting.descriptions import BankKeyError, align_classnames
from ctta.runner.cli import main


def test_missing_classes_error_is_a_key_and_value_error_with_a_plain_message():
    with pytest.raises(BankKeyError) as err:
        align_classnames(["one", "two"], ["cat", "one"], what="CuPL descriptions")
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    assert str(err.value).startswith("no CuPL descriptions for classes ['cat']")  # not quoted as KeyError quotes


def test_glov_unknown_dataset_is_one_line_naming_strategy_dataset(tmp_path, capsys):
    rc = main(["run", "configs/smoke/glov_digits.yaml", "strategy.dataset=NoSuchSet", f"log.out_dir={tmp_path}/o"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    (line,) = [s for s in err.splitlines() if "has no GLOV prompts" in s]
    assert "ctta: BankKeyError: dataset 'NoSuchSet'" in line and "set strategy.dataset to one of them" in line


def test_glov_prompt_file_without_the_dataset_is_a_value_error():
    from ctta.strategies.glov.discovered import load_templates

    with pytest.raises(ValueError, match=r"has no entry 'ImageNet'"):  # the smoke file holds digits only
        load_templates("configs/smoke/data/glov_discovered_prompts.py", dataset="imagenet")
