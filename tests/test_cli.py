"""The command line's shared behaviour: list options, exit status 2 for every user error (one
line, no traceback), and a --help that gives each option's default and examples."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from featwrap.assets import sample_image
from featwrap.cli import COMMANDS, build_parser, main


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_every_default_and_examples(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "\nexamples:\n  featwrap " in text
    parser = subparsers()[command]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert "default" in (action.help or ""), f"{action.dest}: {action.help!r}"
    assert "%(default)" not in text


def test_list_options_take_words_commas_or_both() -> None:
    extract = subparsers()["extract"]
    for argv in (
        ["--layers", "maxpool", "avgpool", "logits"],
        ["--layers", "maxpool,avgpool,logits"],
        ["--layers", "maxpool,", "avgpool", "logits"],
        ["--layers=maxpool,avgpool", "--layers", "logits"],  # the last one given wins
    ):
        layers = extract.parse_args(argv).layers
        assert layers == (["logits"] if argv[0].startswith("--layers=") else
                          ["maxpool", "avgpool", "logits"]), argv  # fmt: skip
    assert extract.parse_args([]).layers == [
        "maxpool",
        "layer3.0.downsample.1",
        "avgpool",
        "logits",
    ]
    assert extract.parse_args(["--pool", "avg", "logits=none"]).pool == ["avg", "logits=none"]
    assert extract.parse_args(["--pool", "avg,logits=none"]).pool == ["avg", "logits=none"]
    assert extract.parse_args([]).pool == ["none"]


def test_a_list_option_with_only_commas_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["extract", "--layers", ","])
    assert exit_.value.code == 2
    assert "--layers needs at least one value" in capsys.readouterr().err


def test_extract_with_layers_as_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from featwrap import load_features

    out = tmp_path / "f"
    argv = ["extract", "--weights", "none", "--data", str(sample_image("cat.jpg")),
            "--image-size", "32", "--layers", "avgpool", "layer1", "--pool", "avg", "avgpool=none",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    features = load_features(out)
    assert list(features) == ["avgpool", "layer1"]
    assert tuple(features["layer1"].shape) == (1, 64)  # pooled
    assert tuple(features["avgpool"].shape) == (1, 512, 1, 1)  # not pooled


def run_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run a command that must fail as a user error: exit 2, one line on stderr."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_layers_with_a_pattern_that_matches_nothing_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    line = run_error(["layers", "torchvision:resnet18", "--pattern", "nomatch"], capsys)
    assert line == (
        "featwrap layers: error: No layer of torchvision:resnet18 matches --pattern 'nomatch'. "
        "`featwrap layers torchvision:resnet18 --paths-only` lists every path."
    )
    line = run_error(["layers", "--paths-only", "-p", "layer9*", "-d", "1"], capsys)
    assert "matches --pattern 'layer9*' with --depth 1." in line


def test_show_with_an_out_in_a_missing_folder_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "missing" / "grid.png"
    line = run_error(["show", "--weights", "none", "--out", str(out)], capsys)
    assert line == (
        f"featwrap show: error: --out {str(out)!r}: the folder {str(out.parent)!r} does not "
        "exist. Create it first, or pass a path in an existing folder."
    )
    assert not out.parent.exists()
    stats = tmp_path / "nowhere" / "s.png"
    line = run_error(["show", "--out", str(tmp_path / "g.png"), "--stats", str(stats)], capsys)
    assert line.startswith(f"featwrap show: error: --stats {str(stats)!r}: the folder")


@pytest.mark.parametrize("content", [b"not an image at all", b"\x89PNG\r\n\x1a\n truncated"])
def test_show_with_a_file_that_is_not_an_image_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(content)
    out = tmp_path / "grid.png"
    argv = ["show", "--weights", "none", "--image", str(image), "--image-size", "32",
            "--out", str(out)]  # fmt: skip
    line = run_error(argv, capsys)
    assert line.startswith(f"featwrap show: error: {str(image)!r} is not an image PIL can read")
    assert not out.exists()
