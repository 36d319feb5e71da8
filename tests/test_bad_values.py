"""Bad config values through the CLI are one line and exit 2 before a corpus is read; a run that cannot fit
in memory is refused from an estimate made without allocating (lamina.train.budget)."""

import pytest
import torch

from lamina.config import load_config, preset_names
from lamina.errors import LaminaError
from lamina.mixers import mixer_names
from lamina.models import build_model
from lamina.train import budget
from lamina.train.budget import check_fits, estimate_training_memory
from train_harness import error_line

GiB = 1 << 30


@pytest.fixture
def no_corpus(monkeypatch):
    """Reading a corpus fails the test: every refusal here must come first."""

    def refuse(*args, **kwargs):
        pytest.fail("the corpus was loaded before the bad value was refused")

    import lamina.data
    import lamina.train.setup

    monkeypatch.setattr(lamina.data, "load_corpus", refuse)
    monkeypatch.setattr(lamina.train.setup, "load_corpus", refuse)


CLI_BAD = [
    ("model.d_model=0", "model.d_model"),
    ("model.dropout=2", "model.dropout"),
    ("train.lr=nan", "train.lr"),
    ("train.lr=-1", "train.lr"),
    ("train.save_every=0", "train.save_every"),
    ("train.steps=-3", "train.steps"),
    ("train.eval_tokens=-5", "train.eval_tokens"),
    ("train.beta2=1", "train.beta2"),
    ("model.mixers={attn: {heads: 0}}", "model.mixers.attn.heads"),
    ("model.layers=[hgrn, {attn: {mem_len: -1}}]", "model.layers[1].attn.mem_len"),
    ("model.layers=[hgrn, attn", "model.layers=[hgrn, attn"),
    ("data.tokenizer=chars", "data.tokenizer"),
    ("train.stpes=5", "train.stpes"),
]


@pytest.mark.parametrize("override,key", CLI_BAD, ids=[o for o, _ in CLI_BAD])
def test_cli_refuses_a_bad_value_in_one_line(override, key, tmp_path, capsys, no_corpus):
    run = tmp_path / "run"
    assert key in error_line(capsys, ["train", "default", "data.corpus=stdlib", f"train.out_dir={run}", override])
    assert not run.exists()


def test_cli_refuses_a_broken_config_file_in_one_line(tmp_path, capsys, no_corpus):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  d_model: 64\n  layers: [hgrn, attn\ntrain:\n  steps: 5\n")
    err = error_line(capsys, ["train", str(path), f"train.out_dir={tmp_path / 'run'}"])
    assert str(path) in err and "line 4, column 6" in err, err
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"model: {d_model: 64}\n# caf\xe9\n")
    err = error_line(capsys, ["train", str(latin), f"train.out_dir={tmp_path / 'run'}"])
    assert "not UTF-8" in err and str(latin) in err, err


# --------------------------------------------------------------------------- the memory estimate


WORD_VOCAB = {"ptb-word": 10_000, "wikitext-2-word": 33_278}


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_fits_in_24_gb(name, monkeypatch):
    cfg = load_config(name)
    estimate = estimate_training_memory(cfg, WORD_VOCAB.get(name))
    assert 0 < estimate.total < 12 * GiB, f"{name}: {estimate.describe()}"
    monkeypatch.setattr(budget, "available_memory", lambda device: 20 * GiB)  # what a 24 GB machine has free
    assert check_fits(cfg, WORD_VOCAB.get(name), "cpu") == estimate


@pytest.mark.parametrize("name", ["default", "hat", "megabyte", "hmt", "samba"])
def test_the_parameter_count_is_the_models(name):
    cfg = load_config(name)
    assert estimate_training_memory(cfg).parameters == build_model(cfg.model, 257).num_parameters()


def test_every_mixer_is_estimated_without_allocating():
    for name in mixer_names():
        cfg = load_config("default", [f"model.layers=[{name}, {name}]", "model.d_model=64"])
        estimate = estimate_training_memory(cfg)
        assert estimate.parameters > 0 and estimate.activations > 0
        assert name in budget.ACTIVATION_FLOATS, f"measure {name}'s activations for lamina.train.budget"


def test_a_model_too_big_for_memory_is_refused_before_allocation():
    cfg = load_config("default", ["model.d_model=100000"])
    estimate = estimate_training_memory(cfg)
    assert estimate.parameters > 4e11  # built on the meta device: nothing of it exists
    with pytest.raises(LaminaError) as err:
        check_fits(cfg, device="cpu")
    message = str(err.value)
    assert "\n" not in message
    assert "model.d_model=100000" in message and "TiB" in message and "available" in message
    assert "lower model.d_model" in message


def test_too_many_activations_point_at_the_batch(monkeypatch):
    monkeypatch.setattr(budget, "available_memory", lambda device: 1 * GiB)
    cfg = load_config("default", ["train.batch_size=512", "train.seq_len=1024"])
    with pytest.raises(LaminaError, match=r"only 1\.0 GiB is available in memory; lower train\.batch_size or train\.seq_len"):
        check_fits(cfg, device="cpu")


def test_a_model_that_cannot_be_built_is_refused_by_the_estimate():
    cfg = load_config("default", ["model.d_model=32", "model.layers=[attn]", "model.mixers={attn: {heads: 3}}"])
    with pytest.raises(LaminaError, match="attn: d_model 32 must split into 3 heads"):
        estimate_training_memory(cfg)


def test_the_activation_term_follows_the_batch_and_the_segments():
    small = estimate_training_memory(load_config("default", ["train.batch_size=2"]))
    double = estimate_training_memory(load_config("default", ["train.batch_size=4"]))
    segments = estimate_training_memory(load_config("default", ["train.batch_size=2", "train.bptt_segments=2"]))
    assert double.activations == 2 * small.activations == segments.activations
    assert double.weights == small.weights == 16 * small.parameters


def test_available_memory_is_positive():
    assert budget.available_memory("cpu") > 0
    if torch.cuda.is_available():
        assert budget.available_memory("cuda") > 0
