"""Passkey retrieval: deterministic prompts of the requested length; an oracle scores 100%, noise ~0%."""

import re
from contextlib import contextmanager

import pytest
import torch

from lamina.cli import main
from lamina.data import ByteTokenizer, WordTokenizer
from lamina.data.passkey import FILLER, KEY_LINE, QUESTION, passkey_prompt
from lamina.eval import passkey_accuracy
from lamina.errors import LaminaError

BYTES = ByteTokenizer()


@pytest.mark.parametrize("length", [96, 100, 333, 1024, 4096])
def test_prompt_length_key_and_question(length):
    p = passkey_prompt(BYTES, length, seed=5)
    assert len(p.ids) == length
    text = BYTES.decode(p.ids).decode()
    assert text.endswith(QUESTION)
    assert text.count(KEY_LINE.format(key=p.key).strip()) == 1
    assert text.count(p.key) == 2  # both mentions are in the one key line
    assert re.fullmatch(r"\d{5}", p.key) and BYTES.decode(p.answer) == f" {p.key}".encode()
    assert 0 <= p.depth <= 1


def test_prompt_is_deterministic_and_varies_with_seed():
    a, b = passkey_prompt(BYTES, 2000, seed=1), passkey_prompt(BYTES, 2000, seed=1)
    assert torch.equal(a.ids, b.ids) and a.key == b.key
    others = [passkey_prompt(BYTES, 2000, seed=s) for s in range(2, 12)]
    assert len({o.key for o in others}) > 5 and len({o.depth for o in others}) > 3


def test_word_tokenizer_prompt():
    words = WordTokenizer.fit(FILLER + QUESTION + " pass key Remember it.")
    p = passkey_prompt(words, 300, seed=0)
    assert len(p.ids) == 300 and words.eos_id not in p.ids.tolist()
    assert p.answer.tolist() == [words.unk_id]  # the digits are not in the vocabulary
    assert words.decode(p.ids).decode().endswith(QUESTION)


def test_too_short():
    with pytest.raises(LaminaError, match="too short"):
        passkey_prompt(BYTES, 40)


class Mock(torch.nn.Module):
    """A byte "model" whose state is the text read so far; ``oracle`` predicts the key's digits after "pass key is"."""

    segment_memory = None  # as lamina.models.lm.SequenceModel declares it: no segment memory

    def __init__(self, oracle: bool):
        super().__init__()
        self.oracle = oracle
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.chunks = []

    @contextmanager
    def memory(self, mem_len=None, extra=0):
        yield

    def init_state(self, batch, device=None):
        return b""

    def forward(self, ids, state):
        self.chunks.append(ids.shape[1])
        state = state + bytes(ids[0].tolist())
        logits = torch.randn(1, ids.shape[1], 257)
        if self.oracle:
            key = re.search(rb"The pass key is (\d{5})\.", state)
            tail = re.search(rb"What is the pass key\? The pass key is( \d{0,4})?$", state)
            if key and tail:
                answer = b" " + key.group(1)
                logits[0, -1] = 0
                logits[0, -1, answer[len(tail.group(1) or b"")]] = 1
        return logits, state


def test_oracle_scores_all_and_noise_none():
    oracle = Mock(oracle=True)
    assert passkey_accuracy(oracle, BYTES, 1000, trials=5, context=64) == (5, 5)
    assert max(oracle.chunks) == 64  # the prompt was read in segments
    torch.manual_seed(0)
    assert passkey_accuracy(Mock(oracle=False), BYTES, 1000, trials=5, context=64) == (0, 5)


def test_cli_passkey_and_buckets(trained_run, capsys):
    assert main(["eval", str(trained_run), "--passkey", "120,300", "--passkey-trials", "2"]) == 0
    out = capsys.readouterr().out
    assert "length       120:" in out and "length       300:" in out and "/2 correct" in out
    assert main(["eval", str(trained_run), "--split", "valid", "--max-tokens", "3000", "--carry", "yes",
                 "--buckets", "64,256"]) == 0
    out = capsys.readouterr().out
    assert "by position within document" in out and "[256, end)" in out and "state carried" in out
    assert main(["eval", str(trained_run), "--buckets", "64,x"]) == 2
    assert "--buckets takes positive integers" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, text_corpus):
    from conftest import TINY

    from lamina.config import load_config
    from lamina.train import train

    out = tmp_path_factory.mktemp("trained") / "run"
    cfg = load_config("default", TINY + [f"data.corpus={text_corpus}", f"train.out_dir={out}", "train.steps=4",
                                         "train.save_every=4"])
    train(cfg, log=lambda *_: None)
    return out
