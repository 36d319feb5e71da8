"""The Hierarchical Autoregressive Transformer: its word splitter, its model and its runs through the CLI."""

import random

import pytest
import torch

from lamina.data.words import split_words, starts_word, word_starts


# --------------------------------------------------------------------------- the word splitter


def split_streaming(data: bytes, max_len: int) -> list[bytes]:
    """The splitter one byte at a time through :func:`starts_word`."""
    words, prev, length = [], None, 0
    for byte in data:
        if starts_word(prev, byte, length, max_len):
            words.append(bytearray())
            length = 0
        words[-1].append(byte)
        prev, length = byte, length + 1
    return [bytes(w) for w in words]


def test_words_by_the_rule():
    text = "  def f(x):\n    return x_1 + été".encode()
    assert split_words(text, 16) == [
        b"  def", b" f", b"(", b"x", b")", b":", b"\n    return", b" x", b"_", b"1", b" ", b"+", " été".encode(),
    ]
    assert split_words(b"abcdefghij", 4) == [b"abcd", b"efgh", b"ij"]
    assert split_words(b"", 4) == []
    with pytest.raises(ValueError, match="max_len"):
        split_words(b"abc", 0)


def test_utf8_characters_are_cut_only_by_the_length_rule():
    text = "žluťoučký kůň úpěl ďábelské ódy 日本語のテキスト".encode()
    for word in split_words(text, 64):
        word.decode("utf-8")  # every word is whole characters
    assert b"".join(split_words(text, 5)) == text
    assert all(len(w) <= 5 for w in split_words(text, 5))


@pytest.mark.parametrize("max_len", [1, 3, 16])
def test_round_trip_random_and_invalid_bytes(max_len):
    rng = random.Random(max_len)
    for n in [1, 2, 7, 100, 1000]:
        data = bytes(rng.randrange(256) for _ in range(n))  # mostly invalid UTF-8
        words = split_words(data, max_len)
        assert b"".join(words) == data
        assert all(1 <= len(w) <= max_len for w in words)
        assert words == split_words(data, max_len)  # deterministic
        assert words == split_streaming(data, max_len)


@pytest.mark.parametrize("path", ["tinyshakespeare/input.txt", "ptb/ptb.char.valid.txt", "wikitext-2/valid.txt"])
def test_round_trip_corpora(shared_data, path):
    data = (shared_data / path).read_bytes()[:200_000]
    words = split_words(data, 16)
    assert b"".join(words) == data
    assert max(map(len, words)) <= 16
    assert 1.5 < len(data) / len(words) < 12  # words, not bytes nor lines (ptb-char spaces its letters)
    assert words[:2000] == split_streaming(b"".join(words[:2000]), 16)


@pytest.mark.parametrize("max_len", [2, 5, 16])
def test_chunked_word_starts_equal_streaming(max_len):
    rng = random.Random(7)
    alphabet = list(b"ab \n(.") + [0xC3, 0xA9, 0xFF, 256]  # 256: the byte tokenizer's eos id, punctuation
    ids = torch.tensor([[rng.choice(alphabet) for _ in range(60)] for _ in range(3)])
    # streaming truth, row by row
    truth = torch.zeros_like(ids, dtype=torch.bool)
    for b, row in enumerate(ids.tolist()):
        prev, length = None, 0
        for t, byte in enumerate(row):
            truth[b, t] = starts_word(prev, byte, length, max_len)
            length = 1 if truth[b, t] else length + 1
            prev = byte
    assert truth[:, 0].all() and not truth.all()
    prev = length = torch.zeros(3, dtype=torch.long)
    pieces, start = [], 0
    for size in [1, 7, 2, 13, 1, 30, 6]:
        starts, prev, length = word_starts(ids[:, start : start + size], prev, length, max_len)
        pieces.append(starts)
        start += size
    assert torch.equal(torch.cat(pieces, dim=1), truth)


# --------------------------------------------------------------------------- the model

from lamina.config import ModelConfig  # noqa: E402
from lamina.errors import LaminaError  # noqa: E402
from lamina.mixers.state import state_tensors  # noqa: E402
from lamina.eval import generate  # noqa: E402
from lamina.models import HAT, build_model  # noqa: E402
from train_harness import check_decoding_is_one_call  # noqa: E402

TEXT = [
    "  def f(x):\n    return xxxxxxxxxxxx + 1  # été\n".encode()[:40],
    b"hello world, this is a test.. abc \xff\xfe\x80 and\x00",  # invalid UTF-8 and a control byte
]


def small_config(backbone=("attn", "hgrn"), encoder=("hgrn",), decoder=("attn",), max_word_len=4) -> ModelConfig:
    return ModelConfig(
        d_model=32, layers=list(backbone), mixers={"attn": {"heads": 2, "mem_len": 64}},
        hat={"d_byte": 16, "encoder_layers": list(encoder), "decoder_layers": list(decoder), "max_word_len": max_word_len},
    )


def batch() -> torch.Tensor:
    ids = torch.tensor([list(t[:40]) for t in TEXT])
    ids[1, 20] = 256  # a document separator inside a row
    return ids


def model(**kwargs) -> HAT:
    torch.manual_seed(0)
    return build_model(small_config(**kwargs), 257).double().eval()


def test_build_model_picks_hat_and_needs_bytes():
    assert isinstance(model(), HAT)
    assert type(build_model(ModelConfig(d_model=32, layers=["hgrn"]), 257)).__name__ == "LM"
    with pytest.raises(LaminaError, match="byte tokenizer"):
        build_model(small_config(), 1000)


@pytest.mark.parametrize("hat, match", [
    ({"d_byte": 0}, "model.hat.d_byte"),
    ({"max_word_len": -1}, "model.hat.max_word_len"),
    ({"encoder_layerz": ["attn"]}, "unknown keys"),
])
def test_bad_hat_config(hat, match):
    with pytest.raises(LaminaError, match=match):
        ModelConfig(hat=hat)


def test_bad_hat_config_from_yaml_and_schedules():
    from lamina.config import load_config

    with pytest.raises(LaminaError, match="model.hat.max_word_len"):
        load_config("default", ["model.hat={max_word_len: zero}"])
    with pytest.raises(LaminaError, match="segment memory"):
        ModelConfig(hat={}, memory_tokens=4)
    with pytest.raises(LaminaError, match=r"model.hat.decoder_layers\[0\]"):
        build_model(ModelConfig(d_model=32, layers=["hgrn"], hat={"decoder_layers": [{"attn": {"headz": 2}}]}), 257)
    with pytest.raises(LaminaError, match="unknown mixer"):
        build_model(ModelConfig(d_model=32, layers=["hgrn"], hat={"encoder_layers": ["nope"]}), 257)
    with pytest.raises(LaminaError, match="masks"):
        model()(batch(), resets=torch.zeros(2, 40, dtype=torch.bool))


def test_next_byte_distribution_sums_to_one():
    logits, _ = model()(batch())
    assert logits.shape == (2, 40, 257)
    total = logits.softmax(-1).sum(-1)
    assert torch.allclose(total, torch.ones_like(total))


def test_causal():
    m, ids = model(), batch()
    logits, _ = m(ids)
    for t in [0, 5, 17, 39]:
        changed = ids.clone()
        changed[:, t] = torch.tensor([ord("("), ord("q")])  # a word start in row 0, a continuation in row 1
        other, _ = m(changed)
        assert torch.allclose(other[:, :t], logits[:, :t], atol=1e-12)
        assert not torch.allclose(other[:, t:], logits[:, t:])


@pytest.mark.parametrize("kwargs", [{}, {"backbone": ("hgrn",), "encoder": ("attn",), "decoder": ("hgrn",)},
                                    {"max_word_len": 16}])
def test_full_equals_chunks_equals_bytes(kwargs):
    m, ids = model(**kwargs), batch()
    full, full_state = m(ids)
    # chunk edges inside words (row 0's "xxxx..." is cut by max_word_len), and at word ends
    for sizes in [[3, 1, 6, 11, 19], [1] * 40, [16, 24], [7, 0, 33]]:
        state, pieces, start = None, [], 0
        for size in sizes:
            out, state = m(ids[:, start : start + size], state)
            pieces.append(out)
            start += size
        assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-10)
        flat = zip(state_tensors(state), state_tensors(full_state))
        assert all(torch.allclose(a.double(), b.double(), atol=1e-10) for a, b in flat)


def test_word_level_backbone_is_used():
    """The backbone's words reach the decoder: changing a backbone weight changes logits after the first word only."""
    m, ids = model(), batch()
    logits, _ = m(ids)
    with torch.no_grad():
        m.backbone.blocks[0].mlp.down.weight.add_(0.5)
    other, _ = m(ids)
    first_end = 4  # row 0: "  de" is its first word (max_word_len 4), known over when byte 4 arrives
    assert torch.allclose(other[0, :first_end], logits[0, :first_end], atol=1e-12)
    assert not torch.allclose(other[0, first_end:], logits[0, first_end:])


def test_gradients_reach_every_stack():
    m = model()
    logits, _ = m(batch())
    logits.logsumexp(-1).sum().backward()
    for name in ("encoder", "backbone", "decoder", "down", "up", "embed"):
        grads = [p.grad for n, p in getattr(m, name).named_parameters() if "shared" not in n]  # a 1-layer hgrn's
        assert all(g is not None and g.abs().sum() > 0 for g in grads), name  # lower bound is 0, its table unused


def test_decoding_equals_one_call():
    check_decoding_is_one_call(model(), torch.tensor(list(b"  def f(x): re")), 20, context=8)


def test_describe_and_state_size():
    m = model()
    text = m.describe()
    assert text.splitlines()[0] == "layers (2): attn, hgrn"
    assert "encoder (1): hgrn" in text and "decoder (1): attn" in text
    enc, bb, dec = (sum(b.mixer.state_size() for b in s.blocks) for s in (m.encoder, m.backbone, m.decoder))
    assert m.state_size() == enc + bb + dec + 16 + 32 + 2
    with m.memory(mem_len=5):
        assert [x.mem_len for x in m.memory_layers()] == [5, 5]
    assert [x.mem_len for x in m.memory_layers()] == [64, 64]


# --------------------------------------------------------------------------- through the CLI

from lamina.cli import main  # noqa: E402
from lamina.train import load_model  # noqa: E402

CLI_SMALL = ["model.d_model=32", "model.layers=[hgrn, attn]", "model.hat={d_byte: 16, max_word_len: 8}",
             "model.mixers={attn: {heads: 2, mem_len: 16}}", "train.batch_size=2", "train.seq_len=24",
             "train.warmup_steps=1", "train.eval_tokens=512", "train.sample_tokens=0", "train.save_every=3"]


def test_train_eval_generate_resume_through_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "hat", *CLI_SMALL, "train.steps=3", f"train.out_dir={run}"]) == 0
    assert "final validation" in capsys.readouterr().out
    model_, tokenizer, cfg = load_model(run)
    assert isinstance(model_, HAT) and cfg.model.hat.max_word_len == 8
    assert main(["eval", str(run), "--max-tokens", "300", "--carry", "yes"]) == 0
    assert "bits/byte" in capsys.readouterr().out
    prompt = "def main(ar"
    assert main(["generate", str(run), "--prompt", prompt, "--max-new-tokens", "16", "--temperature", "0"]) == 0
    printed = capsys.readouterr().out
    expected = generate(model_, tokenizer.encode(prompt), max_new_tokens=16, context=cfg.train.seq_len, temperature=0)
    assert printed == (prompt.encode() + tokenizer.decode(expected)).decode("utf-8", errors="replace") + "\n"
    assert main(["train", "--resume", str(run), "train.steps=5"]) == 0  # the carried word state is saved too
    assert "after 5 steps" in capsys.readouterr().out
    assert main(["info", str(run)]) == 0
    assert "encoder (1): attn" in capsys.readouterr().out


def test_word_tokenizer_is_refused(word_corpus, tmp_path, capsys):
    args = ["train", "hat", *CLI_SMALL, *word_corpus, f"train.out_dir={tmp_path}"]
    assert main(args) == 2
    assert "needs the byte tokenizer" in capsys.readouterr().err
