"""The runtime floor and the training step every trainer shares; the tiers that import each other."""

import ast
from pathlib import Path

import pytest
import torch

from lamina.config import load_config
from lamina.errors import LaminaError
from lamina.models import build_model
from lamina.runtime import autocast_for, lr_factor, make_optimizer, make_scheduler, pick_device
from lamina.train.step import Stepper

SRC = Path(__file__).resolve().parent.parent / "src" / "lamina"


def small_model():
    cfg = load_config("hgrn", ["model.d_model=16", "train.warmup_steps=2", "train.steps=6"], layers=1)
    torch.manual_seed(0)
    return build_model(cfg.model, 32), cfg.train


@pytest.mark.parametrize("name, words", [("tpu", "unknown device"), ("mps", "unknown device"),
                                         ("cuda:99", "cuda")])
def test_pick_device_names_a_bad_device(name, words):
    if name == "cuda:99" and not torch.cuda.is_available():
        words = "CUDA is not available"
    with pytest.raises(LaminaError, match=words):
        pick_device(name)


def test_pick_device_auto_and_cpu():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_autocast_only_where_asked():
    cpu = torch.device("cpu")
    assert not isinstance(autocast_for(cpu, "auto"), torch.autocast)
    assert isinstance(autocast_for(cpu, "bf16"), torch.autocast)


def test_weight_decay_spares_vectors():
    model, t = small_model()
    decay, no_decay = make_optimizer(model, t, torch.device("cpu")).param_groups
    assert decay["weight_decay"] == t.weight_decay and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_schedule_is_warmup_then_cosine():
    model, t = small_model()
    scheduler = make_scheduler(make_optimizer(model, t, torch.device("cpu")), t)
    seen = []
    for _ in range(t.steps):
        seen.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([t.lr * lr_factor(s, 2, t.steps, t.min_lr_ratio) for s in range(t.steps)])
    assert seen[1] == pytest.approx(t.lr) and seen[-1] < seen[2]


def test_stepper_trains_and_skips_ignored_targets():
    model, t = small_model()
    stepper = Stepper(model, t, torch.device("cpu"))
    x = torch.randint(0, 32, (2, 8))
    y = torch.full((2, 8), -100)
    y[:, -1] = x[:, 0]
    first, state = stepper.loss(x, y)
    assert state is not None and torch.isfinite(first)
    before = [p.detach().clone() for p in model.parameters()]
    lr = stepper.lr
    stepper.update(first)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())  # gradients cleared for the next step
    assert stepper.lr != lr  # the schedule moved on
    with torch.no_grad():
        logits, _ = model(x)
        only_scored = torch.nn.functional.cross_entropy(logits[:, -1].float(), y[:, -1])
        assert torch.allclose(stepper.loss(x, y)[0], only_scored)  # the -100 targets count for nothing


def test_stepper_state_round_trips():
    model, t = small_model()
    stepper = Stepper(model, t, torch.device("cpu"))
    x = torch.randint(0, 32, (2, 8))
    stepper.update(stepper.loss(x, x)[0])
    other = Stepper(model, t, torch.device("cpu"))
    other.load_state_dict(stepper.state_dict())
    assert other.lr == stepper.lr and other.scheduler.last_epoch == 1
    assert other.optimizer.state_dict()["state"].keys() == stepper.optimizer.state_dict()["state"].keys()


# each package may import only from these (beside itself and the shared modules below every tier)
TIERS = {"runtime": set(), "eval": {"runtime", "data", "models", "mixers", "ops"},
         "train": {"runtime", "eval", "data", "models", "mixers", "ops"},
         "tools": {"runtime", "train", "eval", "data", "models", "mixers", "ops"}}
SHARED = {"errors", "config", "progress", "plotting"}


def lamina_imports(path: Path) -> set[str]:
    """The top-level lamina modules ``path`` imports (at module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lamina."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("lamina.")}
    return found


@pytest.mark.parametrize("tier", sorted(TIERS))
def test_no_tier_imports_from_above(tier):
    files = [SRC / "runtime.py"] if tier == "runtime" else sorted((SRC / tier).glob("*.py"))
    assert files
    for path in files:
        above = lamina_imports(path) - TIERS[tier] - SHARED - {tier}
        assert not above, f"{path.relative_to(SRC)} imports {sorted(above)}, a tier above {tier}"
