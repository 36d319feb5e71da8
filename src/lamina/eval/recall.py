"""Associative recall accuracy: train a small LM on MQAR and score it on held-out examples (Arora et al. 2023,
"Zoology", §3 and appendix E: two layers, cross-entropy on the query positions only, accuracy = the fraction of
queries whose argmax prediction is the paired value; a sweep takes the best learning rate per model and width).

Examples come from :func:`lamina.data.mqar.mqar`; the test set uses another seed, as in Zoology.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from lamina.config import Config, TrainConfig
from lamina.data.mqar import IGNORE, mqar
from lamina.errors import LaminaError
from lamina.plotting import pyplot
from lamina.models import build_model
from lamina.train.trainer import lr_factor, make_optimizer


@dataclass(frozen=True)
class RecallTask:
    """Zoology's MQAR parameters (see :mod:`lamina.data.mqar`) and the sizes of the two example sets."""

    vocab_size: int = 64
    input_seq_len: int = 32
    num_kv_pairs: int = 4
    power_a: float = 0.01
    random_non_queries: bool = True
    num_passes: int = 1
    train_examples: int = 4000
    test_examples: int = 500

    def examples(self, split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, labels)`` of ``split``; test examples use seed ``seed + 10`` (Zoology's offset)."""
        params = {k: v for k, v in asdict(self).items() if not k.endswith("_examples")}
        n = self.train_examples if split == "train" else self.test_examples
        return mqar(n, **params, seed=seed if split == "train" else seed + 10)


@dataclass
class RecallResult:
    accuracy: float  # fraction of held-out queries answered with the paired value
    loss: float  # mean training loss over the last epoch, nats per query
    state_size: int  # floats of state at an example's last token (see recall_state_size)
    parameters: int


def shuffle_labels(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A control: the query labels permuted across all examples, so a key no longer predicts its value."""
    out = labels.clone()
    query = out != IGNORE
    values = out[query]
    out[query] = values[torch.randperm(len(values), generator=gen)]
    return out


@torch.no_grad()
def recall_accuracy(model, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, device) -> float:
    """Fraction of query positions (labels != -100) whose argmax logit is the label.

    Each example is read from an empty state."""
    model.eval()
    correct = total = 0
    for i in range(0, len(inputs), batch_size):
        x, y = inputs[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)
        logits, _ = model(x)
        query = y != IGNORE
        correct += (logits.argmax(-1)[query] == y[query]).sum().item()
        total += query.sum().item()
    return correct / total


def train_recall(cfg: Config, task: RecallTask, epochs: int, device: torch.device, seed: int = 0,
                 shuffled: bool = False) -> RecallResult:
    """Train ``cfg.model`` on ``task``'s train examples for ``epochs`` and score its held-out accuracy.

    The optimiser is :func:`lamina.train.trainer.make_optimizer` with ``cfg.train`` (lr, betas, weight decay) and
    its warmup-then-cosine schedule; each example is a whole sequence read from an empty state, in batches of
    ``cfg.train.batch_size``, reshuffled every epoch. ``shuffled`` trains on :func:`shuffle_labels` (a control).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise LaminaError(f"epochs must be a positive integer, got {epochs!r}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    inputs, labels = task.examples("train", seed)
    if shuffled:
        labels = shuffle_labels(labels, gen)
    model = build_model(cfg.model, task.vocab_size).to(device)
    train = cfg.train
    opt = make_optimizer(model, train, device)
    per_epoch = math.ceil(len(inputs) / train.batch_size)
    total = epochs * per_epoch
    step, loss_sum = 0, 0.0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(inputs), generator=gen)
        loss_sum = 0.0
        for i in range(0, len(inputs), train.batch_size):
            idx = order[i:i + train.batch_size]
            x, y = inputs[idx].to(device), labels[idx].to(device)
            for group in opt.param_groups:
                group["lr"] = train.lr * lr_factor(step, train.warmup_steps, total, train.min_lr_ratio)
            logits, _ = model(x)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if train.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            opt.step()
            loss_sum += loss.item()
            step += 1
    test_inputs, test_labels = task.examples("test", seed)
    accuracy = recall_accuracy(model, test_inputs, test_labels, train.batch_size, device)
    return RecallResult(accuracy, loss_sum / per_epoch, recall_state_size(model, task), model.num_parameters())


def recall_state_size(model, task: RecallTask) -> int:
    """``model.state_size()`` with attention holding a whole example (its own memory plus ``input_seq_len``):
    the state that answers the last query, which Zoology's plots put on the x axis (a KV cache of 2 * L * d per
    attention layer; a recurrent layer's fixed state)."""
    with model.memory(extra=task.input_seq_len):
        return model.state_size()


def recall_train_config(train: TrainConfig, lr: float, batch_size: int, epochs: int, task: RecallTask) -> TrainConfig:
    """``train`` with the recall run's lr and batch size, warmup over the first tenth of the steps."""
    steps = epochs * math.ceil(task.train_examples / batch_size)
    return replace(train, lr=lr, batch_size=batch_size, warmup_steps=max(1, steps // 10))


def recall_config(target: str | None, overrides: list[str] = ()) -> Config:
    """The model to train: a mixer's name gives Zoology's two layers of it; a preset (or YAML file) keeps its own
    layer schedule. Either way ``model.d_model`` starts at 64 so a CPU run takes seconds; overrides come last."""
    from lamina.config import apply_override, from_dict, load_preset
    from lamina.mixers import mixer_names

    target = target or "attn"
    data = load_preset(target)
    if target in mixer_names():
        data["model"]["layers"] = [target] * 2
    data["model"]["d_model"] = 64
    for assignment in overrides:
        apply_override(data, assignment)
    cfg = from_dict(Config, data)
    for byte_model in ("hat", "megabyte"):
        if getattr(cfg.model, byte_model) is not None:
            raise LaminaError(f"{target}: model.{byte_model} reads UTF-8 bytes, not MQAR's token ids; "
                              f"pick a mixer or another preset, or add model.{byte_model}=null")
    return cfg


@dataclass
class SweepCell:
    """One (model, width): the accuracy at every learning rate and the best of them, as Zoology reports."""

    model: str
    d_model: int
    results: dict[float, RecallResult]

    @property
    def best_lr(self) -> float:
        return max(self.results, key=lambda lr: self.results[lr].accuracy)

    @property
    def best(self) -> RecallResult:
        return self.results[self.best_lr]


def sweep(targets: list[str], overrides: list[str], widths: list[int], lrs: list[float], task: RecallTask,
          epochs: int, batch_size: int, device: torch.device, seed: int = 0, log=print) -> list[SweepCell]:
    """Train every target at every width and learning rate; one cell per (target, width)."""
    cells = []
    for target in targets:
        for width in widths:
            cfg = recall_config(target, [*overrides, f"model.d_model={width}"])
            cell = SweepCell(target, width, {})
            for lr in lrs:
                cfg.train = recall_train_config(cfg.train, lr, batch_size, epochs, task)
                cell.results[lr] = result = train_recall(cfg, task, epochs, device, seed)
                log(f"  {target:<12} d_model {width:>5}  lr {lr:<8g} accuracy {result.accuracy:.3f}  "
                    f"state {result.state_size:,}")
            cells.append(cell)
    return cells


def sweep_table(cells: list[SweepCell], task: RecallTask) -> str:
    """Markdown: one row per (model, width) with its best learning rate's accuracy, and every lr's accuracy."""
    lrs = list(cells[0].results)
    lines = [
        f"MQAR: vocab {task.vocab_size}, length {task.input_seq_len}, {task.num_kv_pairs} key-value pairs, "
        f"power_a {task.power_a}, {task.num_passes} pass(es); {task.train_examples} train and {task.test_examples} "
        "test examples; accuracy on held-out queries at the best learning rate.",
        "",
        "| model | d_model | state size | parameters | best lr | accuracy | "
        + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(lrs),
    ]
    for c in cells:
        by_lr = " | ".join(f"{c.results[lr].accuracy:.3f}" for lr in lrs)
        lines.append(f"| {c.model} | {c.d_model} | {c.best.state_size:,} | {c.best.parameters:,} | {c.best_lr:g} | "
                     f"{c.best.accuracy:.3f} | {by_lr} |")
    return "\n".join(lines) + "\n"


def plot_sweep(cells: list[SweepCell], task: RecallTask, path) -> None:
    """Accuracy against state size (log scale), one line per model, points ordered by width (Zoology, Fig. 2)."""
    plt = pyplot("the recall sweep's plots")
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in dict.fromkeys(c.model for c in cells):
        mine = sorted((c for c in cells if c.model == model), key=lambda c: c.best.state_size)
        ax.plot([c.best.state_size for c in mine], [c.best.accuracy for c in mine], marker="o", label=model)
    ax.set_xscale("log")
    ax.set_xlabel("state size (floats per sequence)")
    ax.set_ylabel("MQAR accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"MQAR: length {task.input_seq_len}, {task.num_kv_pairs} kv pairs, vocab {task.vocab_size}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

