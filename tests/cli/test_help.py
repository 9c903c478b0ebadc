"""The help as a product: flags as flags, upper-case argument names, completion, one-line
usage errors."""

import pytest

from avfeat.testing.runner import one_line_error, run_avfeat as avfeat

COMMANDS = ["demo", "synth", "extract", "info", "train-head", "attention-map", "index", "search",
            "sync", "audit", "export", "serve", "eval"]


@pytest.mark.parametrize("command", COMMANDS)
def test_flags_show_no_type_and_arguments_are_upper_case(command):
    text = avfeat(command, "--help", check=0).stdout
    assert "<bool>" not in text
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert all(piece.strip("[].").isupper() for piece in usage.split(command, 1)[1].split()), usage
    assert not text.rstrip().endswith(" ."), text[-200:]


def test_root_help_has_no_bool_and_offers_completion():
    text = avfeat("--help", check=0).stdout
    assert "<bool>" not in text and "--show-completion" in text and "--install-completion" in text


def test_show_completion_prints_a_script():
    # As a user types it in bash: typer finds the shell among the command's parent processes.
    import subprocess
    import sys
    from pathlib import Path

    command = f"'{Path(sys.executable).parent / 'avfeat'}' --show-completion; exit $?"  # two commands: bash stays the parent
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "complete" in result.stdout and "_AVFEAT_COMPLETE" in result.stdout, result.stderr


@pytest.mark.parametrize("args, words", [
    (("search", "idx", "q", "-k", "0"), ["-k", "avfeat search --help"]),
    (("info", "--no-such-option"), ["--no-such-option", "avfeat info --help"]),
    (("no-such-command",), ["no-such-command", "avfeat --help"]),
    (("index",), ["CACHE", "avfeat index --help"]),
])
def test_usage_errors_are_one_line_exit_2(args, words):
    result = avfeat(*args)
    assert result.returncode == 2, result.stderr
    one_line_error(result, *words)


@pytest.mark.parametrize("command, option, choices", [
    ("train-head", "--head", "linear|mlp"),
    ("train-head", "--aggregation", "max-mean|mean-pool|cls"),
    ("extract", "--dtype", "auto|float32|float16|bfloat16|int8"),
    ("extract", "--layout", "vggsound|audioset"),
    ("extract", "--storage", "float16|int8"),
    ("extract", "--decode-mode", "exact|keyframes"),
    ("search", "--from", "audio|visual"),
    ("export", "--level", "video|window"),
    ("export", "--format", "parquet|npy"),
    ("eval", "--knn-vote", "weighted|majority"),
])
def test_choices_are_listed_and_others_refused(command, option, choices):
    assert f"{option} <{choices}>" in avfeat(command, "--help", check=0).stdout
    result = avfeat(command, "x", option, "nope")
    assert result.returncode == 2, result.stderr
    one_line_error(result, option, "nope", *(f"'{c}'" for c in choices.split("|")))
