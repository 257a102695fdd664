"""transformers is optional: featwrap imports and works without it, and an hf: name says how to
install it. Runs whether transformers is installed or not (it is blocked in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    import featwrap
    import featwrap.cli

    for info in pkgutil.walk_packages(featwrap.__path__, "featwrap."):
        if not info.name.endswith("__main__"):  # that one runs the command line
            importlib.import_module(info.name)
    assert "transformers" not in sys.modules, "featwrap imported transformers"

    class Blocked:  # as if transformers were not installed
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "transformers":
                raise ImportError("No module named 'transformers'")
            return None

    sys.meta_path.insert(0, Blocked())
    from torch import nn
    from featwrap import FeatureModel, FeatwrapError, stages
    from featwrap.errors import MissingDependencyError
    from featwrap.hub import load_model

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    import torch
    assert list(FeatureModel(net, ["0"])(torch.randn(1, 3, 8, 8))) == ["logits", "0"]
    from torchvision.models import resnet18
    assert stages(resnet18())[-1] == "layer4"
    try:
        load_model("hf:" + sys.argv[1])
    except MissingDependencyError as error:
        assert isinstance(error, (FeatwrapError, ImportError))
        print(error)
    else:
        raise SystemExit("no error")
    """
)


@pytest.mark.slow  # a subprocess that imports every featwrap module
def test_featwrap_works_without_transformers(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'featwrap[hf]'" in done.stdout
