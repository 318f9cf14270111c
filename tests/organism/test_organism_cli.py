"""Bad input to `quantfid-organism`: one clear error, non-zero exit, nothing written."""

import pytest

from quantfid.models import organism_path
from quantfid.organism.cli import main


def test_export_from_a_directory_without_a_model_fails_clearly(tmp_path, capsys):
    before = sorted(p.name for p in organism_path().iterdir())
    assert main(["export", "--from", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--from" in err and "model.safetensors" in err and "train" in err
    assert sorted(p.name for p in organism_path().iterdir()) == before


def test_eval_of_a_missing_model_names_the_field(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "nope")]) == 2
    assert "model.name_or_path" in capsys.readouterr().err


@pytest.mark.parametrize("n", ["0", "201"])
def test_per_family_must_be_within_the_held_out_sets(capsys, n):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--per-family", n])
    assert exc.value.code == 2
    assert "--per-family must be between 1 and 200" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["cohort-table", "gguf-check"])
def test_pass_through_subcommands_take_their_own_options(capsys, command):
    """`quantfid-organism gguf-check --quants ...` reaches gguf_check's own parser (argparse's REMAINDER used to
    refuse a leading option): an unknown option is refused by that parser, naming the subcommand's prog."""
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert f"quantfid-organism {command}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main([command, "--no-such-option"])
    assert exc.value.code == 2
    assert "--no-such-option" in capsys.readouterr().err
