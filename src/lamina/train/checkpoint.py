"""Checkpoints: one directory per save, written atomically and verified on load.

A run directory holds ``ckpt-<step>/`` directories and a ``latest`` file that
names the newest. A checkpoint directory holds ``config.yaml``,
``tokenizer.json``, ``model.safetensors``, ``trainer.pt`` (optimizer,
scheduler, RNG states, step, data position, the carried state) and
``manifest.json`` with every file's size and sha256. A checkpoint is written
under a temporary name and renamed into place, then ``latest`` is replaced
atomically, so a crash at any moment leaves the previous checkpoint intact.
Loading a run directory takes the checkpoint ``latest`` names, or, if that one
is broken, the newest checkpoint that verifies (and says so).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lamina.config import Config, config_from_yaml
from lamina.errors import LaminaError
from lamina.train.run_dir import temporary_path, write_error

MANIFEST = "manifest.json"
LATEST = "latest"


@dataclass
class Checkpoint:
    path: Path
    config: Config
    tokenizer: dict
    model_state: dict[str, torch.Tensor]
    trainer_state: dict[str, Any] | None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = temporary_path(path)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    run_dir: Path,
    step: int,
    config: Config,
    tokenizer: dict,
    model_state: dict[str, torch.Tensor],
    trainer_state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``run_dir/ckpt-<step>`` atomically, point ``latest`` at it, prune old ones.

    A failed write (a full disk, say) removes what it wrote and is a LaminaError; the previous
    checkpoint and ``latest`` are untouched."""
    run_dir.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{step:07d}"
    tmp = temporary_path(run_dir / name)
    try:
        _write_checkpoint(tmp, step, config, tokenizer, model_state, trainer_state)
        final = run_dir / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_text_atomic(run_dir / LATEST, name + "\n")
        _fsync_dir(run_dir)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        temporary_path(run_dir / LATEST).unlink(missing_ok=True)
        raise write_error(run_dir / name, err, "save the checkpoint") from None
    old = sorted(p for p in run_dir.glob("ckpt-*") if p.is_dir() and p.name != name)
    for stale in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _write_checkpoint(tmp: Path, step: int, config: Config, tokenizer: dict, model_state: dict, trainer_state: dict) -> None:
    """Every file of a checkpoint, with its manifest, into the fresh directory ``tmp`` (synced to disk)."""
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    (tmp / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    (tmp / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()}, tmp / "model.safetensors")
    torch.save(trainer_state, tmp / "trainer.pt")
    files = sorted(p.name for p in tmp.iterdir())
    manifest = {f: {"bytes": (tmp / f).stat().st_size, "sha256": _sha256(tmp / f)} for f in files}
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": manifest}, indent=1), encoding="utf-8")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)


def _read_latest(run_dir: Path) -> tuple[str, str]:
    """``(name, problem)``: the checkpoint ``latest`` names, and what is wrong with it (``""`` if nothing)."""
    latest = run_dir / LATEST
    if not latest.is_file():
        return "", f"{latest} is missing"
    try:
        named = latest.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        return "", f"{latest} is unreadable ({err})"
    if not named:
        return "", f"{latest} is empty"
    if not (run_dir / named / MANIFEST).is_file():
        return named, f"{latest} names {named}, which is missing or incomplete"
    return named, ""


def resolve_checkpoint(path: str | Path, note=None) -> Path:
    """A verified checkpoint: ``path`` itself if it is a checkpoint directory, else the run directory's newest
    intact one. The one ``latest`` names comes first; when it is broken (missing, empty, corrupt) the newest
    checkpoint that verifies is used instead and ``note`` (default: a line on stderr) says so."""
    path = Path(path)
    if not path.exists():
        raise LaminaError(f"checkpoint {path} does not exist; give a run directory or a ckpt-* directory")
    if not path.is_dir():
        raise LaminaError(f"{path} is a file, not a lamina checkpoint or run directory; give a run directory")
    if (path / MANIFEST).is_file():
        verify_checkpoint(path)
        return path
    named, problem = _read_latest(path)
    saved = sorted((p for p in path.glob("ckpt-*") if p.is_dir()), reverse=True)
    candidates = sorted(saved, key=lambda p: p.name != named)  # the one latest names first, then newest first
    if not candidates:
        if (path / LATEST).exists():
            raise LaminaError(f"{path} holds no checkpoint ({problem} and there is no ckpt-* directory)")
        raise LaminaError(f"{path} is not a lamina checkpoint (no {MANIFEST}) or run directory (no {LATEST})")
    problems = [problem] if problem else []
    for ckpt in candidates:
        try:
            verify_checkpoint(ckpt)
        except LaminaError as err:
            problems.append(str(err))
            continue
        if problems:
            (note or _note)(f"{'; '.join(problems)}; using the newest intact checkpoint, {ckpt}")
        return ckpt
    raise LaminaError(f"{path} has no intact checkpoint: {'; '.join(problems)}")


def _note(message: str) -> None:
    print(f"lamina: note: {message}", file=sys.stderr)


def verify_checkpoint(ckpt: Path) -> None:
    """Check every file against the manifest: missing, truncated or altered files are errors."""
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if not files or not all(isinstance(m, dict) and {"bytes", "sha256"} <= m.keys() for m in files.values()):
            raise ValueError("it lists no files, or a file without its size and sha256")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise LaminaError(f"checkpoint {ckpt} has an unreadable {MANIFEST} ({err}); it is corrupt") from None
    for name, meta in files.items():
        f = ckpt / name
        if not f.is_file():
            raise LaminaError(f"checkpoint {ckpt} is incomplete: {name} is missing")
        size = f.stat().st_size
        if size != meta["bytes"]:
            raise LaminaError(
                f"checkpoint {ckpt} is corrupt or truncated: {name} has {size} bytes, expected {meta['bytes']}"
            )
        if _sha256(f) != meta["sha256"]:
            raise LaminaError(f"checkpoint {ckpt} is corrupt: {name} does not match its sha256 in {MANIFEST}")


def load_checkpoint(path: str | Path, with_trainer_state: bool = False) -> Checkpoint:
    """Load and verify a checkpoint (optionally with the trainer state for resuming)."""
    ckpt = resolve_checkpoint(path)
    try:
        config = config_from_yaml((ckpt / "config.yaml").read_text(encoding="utf-8"), str(ckpt / "config.yaml"))
        tokenizer = json.loads((ckpt / "tokenizer.json").read_text(encoding="utf-8"))
        model_state = load_file(ckpt / "model.safetensors")
        trainer_state = torch.load(ckpt / "trainer.pt", weights_only=True) if with_trainer_state else None
    except (OSError, ValueError, SafetensorError, RuntimeError) as err:
        raise LaminaError(f"checkpoint {ckpt} cannot be read ({err}); it is corrupt") from None
    return Checkpoint(ckpt, config, tokenizer, model_state, trainer_state)


def load_model(path: str | Path | Checkpoint, device: str | torch.device = "cpu"):
    """A trained model ready for evaluation or generation: ``(model, tokenizer, config)``, from a run or
    checkpoint directory or an already loaded checkpoint."""
    from lamina.data import tokenizer_from_dict
    from lamina.models import build_model

    ckpt = path if isinstance(path, Checkpoint) else load_checkpoint(path)
    tokenizer = tokenizer_from_dict(ckpt.tokenizer)
    model = build_model(ckpt.config.model, ckpt.config.model.vocab_size or tokenizer.vocab_size)
    try:
        model.load_state_dict(ckpt.model_state)
    except RuntimeError as err:
        raise LaminaError(f"checkpoint {ckpt.path} does not fit its own config: {str(err).splitlines()[0]}") from None
    return model.to(device).eval(), tokenizer, ckpt.config
