"""Bad option values on every command: one line naming the option, exit status 2, before anything is loaded."""

import pytest

from train_harness import error_line

BAD = [
    ("generate RUN --temperature nan", "--temperature"),
    ("generate RUN --temperature -1", "--temperature"),
    ("generate RUN --temperature inf", "--temperature"),
    ("generate RUN --top-p 2", "--top-p"),
    ("generate RUN --top-p 0", "--top-p"),
    ("generate RUN --top-p nan", "--top-p"),
    ("generate RUN --top-k -5", "--top-k"),
    ("generate RUN --top-k 2.5", "--top-k"),
    ("generate RUN --max-new-tokens -1", "--max-new-tokens"),
    ("generate RUN --max-new-tokens many", "--max-new-tokens"),
    ("eval RUN --batch-size 0", "--batch-size"),
    ("eval RUN --max-tokens -5", "--max-tokens"),
    ("eval RUN --tgt-len -5", "--tgt-len"),
    ("eval RUN --tgt-len 0", "--tgt-len"),
    ("eval RUN --mem-len -1", "--mem-len"),
    ("eval RUN --corrupt 1.5", "--corrupt"),
    ("eval RUN --corrupt nan", "--corrupt"),
    ("eval RUN --passkey-trials 0", "--passkey-trials"),
    ("eval RUN --carry sometimes", "--carry"),
    ("compare attn hgrn --tokens 0", "--tokens"),
    ("compare attn hgrn --minutes -1", "--minutes"),
    ("bench attn --max-seconds 0", "--max-seconds"),
    ("bench attn --repeats 0", "--repeats"),
    ("bench attn --threads -2", "--threads"),
    ("recall attn --epochs 0", "--epochs"),
    ("recall attn --lr nan", "--lr"),
    ("recall attn --kv-pairs -4", "--kv-pairs"),
]


@pytest.mark.parametrize("command,option", BAD, ids=[c for c, _ in BAD])
def test_a_bad_option_value_is_one_line(command, option, tmp_path, capsys, monkeypatch):
    import lamina.train.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "resolve_checkpoint", lambda *a, **k: pytest.fail("a checkpoint was looked up"))
    assert option in error_line(capsys, command.replace("RUN", str(tmp_path / "run")).split())
    assert not list(tmp_path.iterdir()), "a refused command wrote something"


@pytest.mark.parametrize("device", ["xyz", "tpu", "cuda:99"])
def test_an_unknown_device_is_one_line(device, capsys):
    assert device.split(":")[0] in error_line(capsys, ["eval", "nowhere", "--device", device])
