"""The prdit command: every subcommand has --help, errors are one line with exit status 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from prdit.cli import build_parser, main

PHANTOM_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "phantom" / "local.yaml")
SUBCOMMANDS = [
    ["demo"], ["train"], ["sample"], ["export"], ["convert"], ["preview"], ["config"],
    ["data", "phantom"], ["data", "lidc"], ["data", "rad"], ["data", "split"],
    ["evaluate", "fid"], ["evaluate", "mmd"], ["evaluate", "msssim"], ["evaluate", "wgan"], ["evaluate", "offline"],
]


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: prdit " + " ".join(command) in capsys.readouterr().out


def test_help_imports_no_heavy_library():
    """Every --help stays instant: the command modules import library code only inside their run functions."""
    script = (
        "import contextlib, io, sys\n"
        "from prdit.cli import main\n"
        f"for command in {[[]] + SUBCOMMANDS + [['data'], ['evaluate']]!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main([*command, '--help'])\n"
        "print(sorted({name.split('.')[0] for name in sys.modules} & {'torch', 'scipy', 'numpy', 'pydantic', 'matplotlib'}))\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]", completed.stdout


def test_gpu_id_is_an_alias_of_device():
    parser = build_parser()
    assert parser.parse_args(["evaluate", "wgan", "--data_root_real", "r", "--data_root_fake_0", "f", "--save_path", "s",
                              "--gpu_id", "-1"]).device == "-1"
    assert parser.parse_args(["sample", "--gpu_id", "1"]).device == "1"
    assert parser.parse_args(["sample"]).device == "auto"


def test_top_level_help_lists_only_working_commands():
    listed = set(build_parser()._subparsers._group_actions[0].choices)
    assert listed == {"demo", "train", "sample", "export", "convert", "preview", "config", "data", "evaluate", "report", "restore", "plan"}


def test_errors_are_one_line_with_status_2(tmp_path, capsys):
    assert main(["config", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prdit: error: ") and "missing.yaml" in err and err.count("\n") == 1
    assert main(["preview", str(tmp_path / "none.nii.gz")]) == 2
    assert "none.nii.gz" in capsys.readouterr().err


def test_config_override_round_trip(capsys):
    assert main(["config", "--config", PHANTOM_CONFIG, "training.lr=0.01", "data.image_size=64"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.01" in out and "image_size: 64" in out
    assert main(["config", "--config", PHANTOM_CONFIG, "training.lrr=0.01"]) == 2
    assert "did you mean 'training.lr'" in capsys.readouterr().err


def test_sample_flags_that_disagree_are_refused(capsys):
    assert main(["sample", "--ckpt", "x.pt", "--num-volumes", "3", "--total-samples", "4"]) == 2
    assert "disagree" in capsys.readouterr().err
