"""A run that fails while a progress bar is open prints its error on a line of its own, starting ``ctta:`` (it was
appended to the bar's line: ``glov:   0%| ... ctta: ...``)."""

from ctta.runner.cli import main


def test_error_after_an_open_progress_bar_starts_its_own_line(tmp_path, capsys):
    rc = main(["run", "configs/smoke/glov_digits.yaml", "strategy.dataset=NoSuchSet", f"log.out_dir={tmp_path}/o"])
    err = capsys.readouterr().err
    assert rc == 2
    (line,) = [s for s in err.replace("\r", "\n").splitlines() if "has no GLOV prompts" in s]
    assert line.startswith("ctta: ")
