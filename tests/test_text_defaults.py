"""Text models measured without an example input: summary, feature_info, stages, find_unused and
`featwrap layers` feed token ids (not an image) to a model whose input is token ids.

References: the shapes of a real forward on token ids of the same length (hidden states for
Hugging Face models, plain cloning hooks for our own encoder), never featwrap's own output.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from featwrap import FeatureModel, stages, summary
from featwrap.cli import main as cli_main
from tests.reference import reference
from tests.text_models import VOCAB, TextEncoder

transformers = pytest.importorskip("transformers")

from tests.hf_models import bert, built, gpt2  # noqa: E402


def _hidden_shapes(model: nn.Module, length: int) -> list[tuple[int, ...]]:
    ids = torch.randint(2, 100, (1, length))
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    return [tuple(h.shape[1:]) for h in out.hidden_states[1:]]  # the blocks' outputs


@pytest.mark.parametrize(
    ("build", "stack", "positions"), [(bert, "encoder.layer", 32), (gpt2, "h", 32)]
)
def test_hf_summary_measures_token_ids(build: object, stack: str, positions: int) -> None:
    model = built(build)  # type: ignore[arg-type]
    table = summary(model, pattern=f"{stack}.?")
    rows = {row.path: row for row in table}
    expected = _hidden_shapes(model, 16)  # 16 tokens by default, within the 32 positions
    assert [rows[f"{stack}.{i}"].shapes for i in range(len(expected))] == expected
    assert table.input_size == (16,)
    # one int is a number of tokens for a text model
    assert summary(model, 9, pattern=f"{stack}.0")[0].shapes == _hidden_shapes(model, 9)[0]


@pytest.mark.parametrize("build", [bert, gpt2])
def test_hf_feature_info_and_stages_without_inputs(build: object) -> None:
    model = built(build)  # type: ignore[arg-type]
    keys = stages(model)
    fm = FeatureModel(model, keys, output_key=None)
    info = fm.feature_info()
    expected = _hidden_shapes(model, 16)
    assert [info[k].shape for k in info] == expected[: len(keys)]
    assert info.channels() == [32] * len(keys)


def test_own_text_encoder_measured_on_token_ids() -> None:
    torch.manual_seed(0)
    model = TextEncoder().eval()
    ids = torch.randint(0, VOCAB, (1, 16))
    paths = ["embed", "encoder.layers.1"]
    with torch.no_grad():
        _, calls = reference(model, paths, ids)
    table = {row.path: row for row in summary(model, layers=paths)}
    for path in paths:
        assert table[path].shapes == tuple(calls[path][-1].shape[1:])


def test_find_unused_on_a_text_model() -> None:
    model = built(bert)
    fm = FeatureModel(model, ["encoder.layer.0"], output_key=None)
    unused = fm.find_unused()
    # the modules after the first block (and the pooler) give nothing to the feature
    assert "pooler" in unused
    assert "encoder.layer.2" in unused
    assert "embeddings" not in unused


def test_cli_layers_on_a_saved_text_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = built(gpt2)
    model.save_pretrained(tmp_path / "gpt")
    assert cli_main(["layers", f"hf:{tmp_path / 'gpt'}", "--pattern", "h.?", "-s", "8"]) == 0
    out = capsys.readouterr().out
    shape = _hidden_shapes(model, 8)[0]
    rows = [line for line in out.splitlines() if line.startswith("h.")]
    assert [row.split()[0] for row in rows] == ["h.0", "h.1", "h.2"]
    assert all(str(shape) in row for row in rows)
