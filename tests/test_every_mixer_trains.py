"""Every mixer and every hybrid preset trains through the CLI on stdlib and on a word corpus laid out like
PTB-char (made by the tests), then generates."""

import pytest

from lamina.cli import main
from lamina.mixers import mixer_names

HYBRIDS = {"griffin": {"rglru", "attn"}, "hawk": {"rglru"}, "samba": {"mamba2", "attn"}, "hgrn2-attn": {"hgrn2", "attn"}}
HYBRIDS["hmt"] = {"attn"}  # not a hybrid: the HMT memory wrapper around attention layers
HYBRIDS["hat"] = {"hgrn"}  # the backbone over words; the byte encoder and decoder are attention
HYBRIDS["megabyte"] = {"hgrn"}  # the global model of MEGABYTE (its local model is one attention layer)
BYTES_ONLY = {"hat", "megabyte"}  # presets that read bytes: the word corpus is read with the byte tokenizer
SMALL = ["model.d_model=32", "train.steps=3", "train.batch_size=2", "train.seq_len=24", "train.warmup_steps=1",
         "train.eval_tokens=256", "train.sample_tokens=0"]


def corpus_overrides(corpus, request):
    """stdlib, or ``toy-words``: registered like PTB-char (word tokenizer by default) with the tests' own text."""
    return ["data.corpus=stdlib"] if corpus == "stdlib" else request.getfixturevalue("word_corpus")


def train_and_generate(capsys, args, run):
    assert main(["train", *args, f"train.out_dir={run}"]) == 0
    out = capsys.readouterr().out
    assert "final validation" in out
    assert main(["generate", str(run), "--max-new-tokens", "12", "--seed", "0"]) == 0
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("corpus", ["stdlib", "words"])
def test_one_model_of_every_mixer(corpus, request, tmp_path, capsys):
    layers = ",".join(mixer_names())
    args = ["default", f"model.layers=[{layers}]", "model.mixers={attn: {heads: 2, mem_len: 8}}", *SMALL]
    train_and_generate(capsys, args + corpus_overrides(corpus, request), tmp_path / "run")
    assert main(["info", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in mixer_names())


@pytest.mark.parametrize("corpus", ["stdlib", "words"])
@pytest.mark.parametrize("preset", sorted(HYBRIDS))
def test_hybrid_preset(preset, corpus, request, tmp_path, capsys):
    assert main(["info", preset]) == 0
    layers = capsys.readouterr().out.split("layers (")[1].split("\n")[0].split(": ")[1].split(", ")
    assert set(layers) == HYBRIDS[preset]
    tokenizer = ["data.tokenizer=bytes"] if preset in BYTES_ONLY else []
    train_and_generate(capsys, [preset, *SMALL, *corpus_overrides(corpus, request), *tokenizer], tmp_path / "run")


WRAPPERS = {
    "rmt": ["model.memory_tokens=4", "train.bptt_segments=2", "model.mixers={attn: {heads: 2, mem_len: 24}}"],
    "xl-compressive": ["model.layers=[xl, xl]", "model.mixers={xl: {heads: 2, mem_len: 8, cmem_len: 4, cmem_rate: 2}}"],
}


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_memory_wrapper_options_train_and_generate(name, tmp_path, capsys):
    """The memory options that are not presets (RMT memory tokens, xl's compressed memory) through the CLI."""
    base = "attn" if name == "rmt" else "xl"
    train_and_generate(capsys, [base, *SMALL, *WRAPPERS[name]], tmp_path / "run")
    assert main(["eval", str(tmp_path / "run"), "--max-tokens", "256"]) == 0
    assert "bits/byte" in capsys.readouterr().out
