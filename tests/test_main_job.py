"""The README's main job end to end: the default preset on stdlib (about six minutes on two cores)."""

import pytest

from lamina.config import load_config
from lamina.eval import metric_value
from lamina.train import train


@pytest.mark.slow
def test_default_preset_reaches_its_readme_number(tmp_path):
    cfg = load_config("default", [f"train.out_dir={tmp_path / 'run'}", "train.sample_tokens=0"])
    result = train(cfg, log=lambda *_: None)
    assert result.step == cfg.train.steps and not result.interrupted
    # README: 2.015 bits/byte on Python 3.11.7's stdlib; other Python versions ship slightly different files
    assert metric_value(result.unit, result.valid_nats) < 2.1
