"""The CLI refuses a bad output path or count with one line and exit 2, before any work
(a traceback after a whole evaluation, before). In-process through ``cbir.cli.main``."""

from __future__ import annotations

import pytest

from cbir.cli import main


@pytest.mark.parametrize("argv", [
    ["search", "--id", "42", "--csv", "/nonexistent-folder/x.csv"],
    ["evaluate", "-m", "efficientnet_lite0", "--json", "/nonexistent-folder/x.json"],
    ["evaluate", "-m", "efficientnet_lite0", "--plot", "/nonexistent-folder/x.png"],
    ["tune-weights", "-m", "efficientnet_lite0,efficientnet_lite1", "--json", "/nonexistent-folder/x.json"],
])
def test_an_output_in_a_missing_folder_is_refused_first(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot write" in err and "does not exist" in err, err


@pytest.mark.parametrize("argv", [
    ["evaluate", "-m", "efficientnet_lite0", "--queries", "-5"],
    ["evaluate", "-m", "efficientnet_lite0", "--feedback-rounds", "1000"],
    ["evaluate", "-m", "efficientnet_lite0", "--feedback-k", "0"],
    ["search", "--id", "42", "--backend", "faiss", "--depth", "0"],
])
def test_counts_out_of_bounds_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2 and "between" in capsys.readouterr().err
