"""MQAR generator (Zoology's multi-query associative recall) and the ``lamina recall`` evaluation."""

import pytest
import torch

from lamina.data.mqar import IGNORE, gap_distribution, mqar
from lamina.errors import LaminaError


def _check_example(x: torch.Tensor, y: torch.Tensor, vocab: int, k: int, passes: int) -> None:
    """Every query's label is the value paired with its key in the pair block; nothing else is labelled."""
    half = vocab // 2
    keys, values = x[0:2 * k:2], x[1:2 * k:2]
    assert ((keys >= 1) & (keys < half)).all() and ((values >= half) & (values < vocab)).all()
    assert len(set(keys.tolist())) == k and len(set(values.tolist())) == k
    assert torch.equal(x[:2 * k * passes], x[:2 * k].repeat(passes))
    pair = dict(zip(keys.tolist(), values.tolist()))
    queries = (y != IGNORE).nonzero().flatten()
    assert len(queries) == k and (queries >= 2 * k * passes).all()
    assert sorted(x[queries].tolist()) == sorted(pair)  # each key queried once
    for q in queries.tolist():
        assert y[q].item() == pair[x[q].item()]


@pytest.mark.parametrize("passes", [1, 2])
@pytest.mark.parametrize("random_non_queries", [True, False])
def test_mqar_structure(passes, random_non_queries):
    vocab, length, k = 50, 41, 4
    x, y = mqar(200, vocab, length, k, power_a=0.3, random_non_queries=random_non_queries, num_passes=passes, seed=3)
    assert x.shape == y.shape == (200, length) and x.dtype == y.dtype == torch.long
    assert ((x >= 0) & (x < vocab)).all()
    for i in range(len(x)):
        _check_example(x[i], y[i], vocab, k, passes)
    blanks = (y == IGNORE) & (torch.arange(length) >= 2 * k * passes)
    if random_non_queries:  # filler is uniform over the vocabulary: zeros are rare, many distinct tokens
        assert (x[blanks] == 0).float().mean() < 0.1 and len(x[blanks].unique()) > vocab * 0.9
    else:
        assert (x[blanks] == 0).all()


def test_mqar_deterministic():
    a = mqar(20, 64, 32, 4, seed=7)
    b = mqar(20, 64, 32, 4, seed=7)
    c = mqar(20, 64, 32, 4, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_mqar_gap_statistics():
    """Gaps between the pair block and the queries follow Zoology's power law: the first draw of each example has
    exactly ``gap_distribution``; power_a = 1 spreads the queries uniformly."""
    n, vocab, length, k = 20000, 64, 64, 2
    for power_a in (0.01, 1.0):
        x, y = mqar(n, vocab, length, k, power_a=power_a, random_non_queries=False, seed=1)
        gaps = ((y != IGNORE).nonzero()[:, 1] - 2 * k) // 2
        hist = torch.bincount(gaps, minlength=(length - 2 * k) // 2).double() / len(gaps)
        p = gap_distribution((length - 2 * k) // 2, power_a)
        # the k gaps are drawn without replacement from p: the marginal of two draws, computed exactly
        second = (p[None, :] * p[:, None] / (1 - p[:, None])).fill_diagonal_(0).sum(0)
        assert torch.allclose(hist, (p + second) / 2, atol=0.01)
    assert hist.max() - hist.min() < 0.02  # uniform at power_a = 1
    p = gap_distribution(30, 0.01)  # Zoology's default: falling as 1 / (g + 1) ** 0.99
    assert (p.diff() < 0).all() and p[0] / p[-1] > 25


@pytest.mark.parametrize("kwargs, message", [
    (dict(vocab_size=8, num_kv_pairs=4), "distinct keys"),
    (dict(input_seq_len=15, num_kv_pairs=4), "too short"),
    (dict(input_seq_len=16, num_kv_pairs=2, num_passes=4), "too short"),
    (dict(power_a=0.0), "power_a"),
    (dict(num_kv_pairs=0), "num_kv_pairs"),
])
def test_mqar_bad_arguments(kwargs, message):
    args = dict(vocab_size=64, input_seq_len=32, num_kv_pairs=4) | kwargs
    with pytest.raises(LaminaError, match=message):
        mqar(4, **args)


# --- lamina recall --------------------------------------------------------------------------------------------
EASY = ["attn", "model.d_model=32", "model.mixers.attn.heads=1", "--vocab-size", "32", "--seq-len", "16",
        "--kv-pairs", "2", "--train-examples", "8000", "--epochs", "4", "--test-examples", "200"]


def _accuracy(capsys, argv) -> float:
    from lamina.cli import main

    assert main(["recall", *argv]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("MQAR accuracy:")]
    return float(line[0].split()[2])


def test_recall_attention_learns_mqar(capsys, one_thread):
    """Two attention layers solve easy MQAR: far above both chance (1/16) and copying a random value of the
    two in context (1/2), which a model that ignores the query key would reach at best."""
    assert _accuracy(capsys, EASY) > 0.9


def test_recall_shuffled_labels_do_not(capsys, one_thread):
    """The control: the same run with the query labels permuted across examples learns no key-value link."""
    assert _accuracy(capsys, [*EASY, "--shuffle-labels"]) < 0.3


def test_recall_sweep_writes_table_and_plot(tmp_path, capsys, one_thread):
    from lamina.cli import main

    out = tmp_path / "sweep"
    argv = ["recall", "--sweep", "--models", "attn,hgrn", "--widths", "16,32", "--lrs", "1e-3,3e-3",
            "--train-examples", "64", "--test-examples", "16", "--epochs", "1", "--out", str(out)]
    assert main(argv) == 0
    table = (out / "recall.md").read_text()
    rows = [ln for ln in table.splitlines() if ln.startswith("| attn") or ln.startswith("| hgrn")]
    assert len(rows) == 4 and "| lr 0.001 | lr 0.003 |" in table
    attn16 = next(r for r in rows if r.startswith("| attn | 16 |")).split("|")
    assert attn16[3].strip() == f"{2 * 2 * 32 * 16:,}"  # two layers' KV cache over the 32-token example
    assert (out / "recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["--kv-pairs", "40"], "distinct keys"),
    (["--seq-len", "8"], "too short"),
    (["--epochs", "0"], "--epochs: must be >= 1"),
    (["nosuchmixer"], "unknown preset 'nosuchmixer'"),
    (["megabyte"], "reads UTF-8 bytes, not MQAR's token ids"),
    (["--widths", "32"], "belong to --sweep"),
    (["--jobs", "2"], "belong to --sweep"),
    (["--sweep", "--jobs", "0"], "--jobs: must be >= 1"),
    (["--sweep", "--lrs", "fast"], "--lrs takes positive numbers"),
    (["--sweep", "--widths", "0"], "--widths takes positive integers"),
    (["--sweep", "attn", "--models", "hgrn"], "not both"),
    (["--sweep", "--models", "attn,nosuch"], "unknown preset 'nosuch'"),
])
def test_recall_bad_arguments(capsys, argv, message):
    from lamina.cli import main

    assert main(["recall", *argv]) == 2
    assert message in capsys.readouterr().err
