"""The topoland command: help, bad input messages and exit codes, train/list/verify."""
import pytest

from tests.helpers import cli, tiny_config

SUBCOMMANDS = ["run", "train", "list", "info", "config", "verify", "sample", "topology", "curvature",
               "report", "compare"]


def test_help_lists_and_teaches():
    r = cli("--help", check=True)
    for sub in SUBCOMMANDS:
        assert sub in r.stdout
    assert "topoland run experiments/quickstart.toml" in r.stdout


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_every_subcommand_has_help(sub):
    r = cli(sub, "--help", check=True)
    assert "usage: topoland " + sub in r.stdout


@pytest.mark.parametrize("body, culprit", [
    ('[train]\nlr = -0.1\n', "config key 'train.lr'"),
    ('[train]\nlearning_rate = 0.1\n', "unknown config key 'train.learning_rate'"),
    ('[model]\nname = "wrn"\ndepth = 12\n', "config key 'model.depth'"),
    ('[data]\nname = "imagenet"\n', "config key 'data.name'"),
    ('[grid]\n"train.weight_decay" = []\n', "empty list"),
    ('[train]\nlr = 0.1 0.2\n', "line 2"),
])
def test_bad_config_one_message_exit_2(tmp_path, body, culprit):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(body)
    r = cli("train", cfg, "--out", tmp_path / "run")
    assert r.returncode == 2
    assert culprit in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr  # one line, no traceback
    assert not (tmp_path / "run").exists()  # nothing created before validation passed


def test_missing_dataset_folder_message(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\nname = "cifar10"\nroot = "{tmp_path / "nowhere"}"\n[train]\nepochs = 1\n')
    r = cli("train", cfg, "--out", tmp_path / "run", "--quiet")
    assert r.returncode != 0
    assert "cifar-10-batches-py" in r.stderr and "download" in r.stderr


def test_train_list_verify(tmp_path):
    cfg = tiny_config(tmp_path / "tiny.toml")
    run = tmp_path / "run"
    cli("train", cfg, "--out", run, "--quiet", check=True)
    r = cli("list", run, check=True)
    assert r.stdout.count("train:d") == 4 and "test_acc" in r.stdout
    assert "consistent" in cli("verify", run, check=True).stdout
    # rerun skips everything
    r = cli("train", cfg, "--out", run, "--quiet", check=True)
    assert "failed" not in r.stderr


def test_info_runs():
    r = cli("info", check=True)
    assert "torch" in r.stdout and "mnist1d" in r.stdout and "device" in r.stdout
