"""``lamina eval RUN --file PATH``: a trained model scored on every byte of files of your own."""

import math

from lamina.cli import main

TINY = ["model.d_model=32", "model.layers=[hgrn]", "train.steps=4", "train.eval_every=4", "train.save_every=4",
        "train.batch_size=2", "train.seq_len=16", "train.eval_tokens=256", "train.sample_tokens=0"]


def _write_corpus(root):
    root.mkdir()
    for i in range(3):
        (root / f"part{i}.txt").write_bytes((f"line {i} of a small corpus\n" * 200).encode())


def test_eval_scores_every_byte_of_a_file_a_directory_and_a_glob(tmp_path, capsys):
    _write_corpus(tmp_path / "corpus")
    run = tmp_path / "run"
    assert main(["train", f"data.corpus={tmp_path / 'corpus'}", f"train.out_dir={run}", *TINY]) == 0
    (tmp_path / "mine").mkdir()
    text = "x\u00e9\xff".encode("utf-8", "surrogatepass") + bytes(range(256))  # any bytes, not only UTF-8
    (tmp_path / "mine" / "a.bin").write_bytes(text)
    (tmp_path / "mine" / "b.bin").write_bytes(text * 2)
    capsys.readouterr()
    both = [len(text), 2 * len(text)]
    for target, sizes in ((tmp_path / "mine" / "a.bin", both[:1]), (tmp_path / "mine", both), (f"{tmp_path}/mine/*.bin", both)):
        assert main(["eval", str(run), "--file", str(target), "--batch-size", "1"]) == 0
        out = capsys.readouterr().out
        tokens = sum(size + 1 for size in sizes) - 1  # each file then an end-of-document token; the first is no target
        assert f"over {tokens:,} tokens" in out and "bits/byte" in out, out
        value = float(out.split("bits/byte")[0].split()[-1])
        assert 0 < value < 2 * math.log2(257)


def test_eval_file_errors_are_one_line(tmp_path, capsys):
    _write_corpus(tmp_path / "corpus")
    run = tmp_path / "run"
    assert main(["train", f"data.corpus={tmp_path / 'corpus'}", f"train.out_dir={run}", *TINY]) == 0
    capsys.readouterr()
    (tmp_path / "empty.txt").write_bytes(b"")
    for argv in (["--file", str(tmp_path / "missing.txt")], ["--file", str(tmp_path / "empty.txt")],
                 ["--file", str(tmp_path / "nothing-*.md")], ["--file", str(tmp_path / "corpus"), "--split", "valid"]):
        assert main(["eval", str(run), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("lamina: error: ") and "\n" not in err, err
