"""Shared checks that a mixer computes one function in every form.

``full == chunks with carried state == token by token``, for outputs, final
states and gradients (with respect to the input and every parameter).
"""

from __future__ import annotations

import math

import torch

from torch import nn

from lamina.mixers import mixer_class, use_form
from lamina.mixers.lower_bound import LOWER_BOUNDS
from lamina.mixers.base import flatten_state


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 (0 when both are zero)."""
    a, b = a.detach().double(), b.detach().double()
    denom = b.norm()
    return float((a - b).norm() / denom) if denom > 0 else float(a.norm())


def run_in_chunks(mixer, x, sizes, state=None):
    """Feed ``x`` through ``mixer`` in consecutive chunks of the given sizes, carrying state."""
    outputs, start = [], 0
    for size in sizes:
        y, state = mixer(x[:, start : start + size], state)
        outputs.append(y)
        start += size
    assert start == x.shape[1], "chunk sizes must cover the sequence"
    return torch.cat(outputs, dim=1), state


def split_sizes(total: int, first: int) -> list[int]:
    """Uneven chunk sizes covering ``total``: first, first+2, first+4, ..."""
    sizes, size = [], first
    while sum(sizes) < total:
        sizes.append(min(size, total - sum(sizes)))
        size += 2
    return sizes


def grads_of(mixer, x, run) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, dict]:
    """Outputs, final state and gradients of a fixed random projection of the outputs."""
    mixer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y, state = run(mixer, x)
    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(123), dtype=torch.float64).to(y)
    (y * weight).sum().backward()
    params = {n: p.grad.detach().clone() for n, p in mixer.named_parameters() if p.grad is not None}
    return y.detach(), {k: v.detach() for k, v in flatten_state(state).items()}, x.grad.detach(), params


def assert_close_all(got, want, tol: float, what: str) -> None:
    y, s, gx, gp = got
    y0, s0, gx0, gp0 = want
    assert rel_err(y, y0) < tol, f"{what}: outputs differ by {rel_err(y, y0):.2e}"
    assert s.keys() == s0.keys()
    for k in s0:
        assert rel_err(s[k], s0[k]) < tol, f"{what}: state {k} differs by {rel_err(s[k], s0[k]):.2e}"
    assert rel_err(gx, gx0) < tol, f"{what}: input gradients differ by {rel_err(gx, gx0):.2e}"
    assert gp.keys() == gp0.keys(), f"{what}: different parameters received gradients"
    for k in gp0:
        assert rel_err(gp[k], gp0[k]) < tol, f"{what}: gradient of {k} differs by {rel_err(gp[k], gp0[k]):.2e}"


def check_forms_agree(mixer, x, *, tol: float = 1e-5, chunk: int = 5) -> None:
    """The default form, uneven carried chunks, the recurrent form and T=1 calls all agree.

    The reference is the recurrent form of a float64 copy of the mixer; the
    fp32 paths must match it within ``tol``.
    """
    ref_mixer = _float64_copy(mixer)

    def recurrent(m, inp):
        with use_form("recurrent"):
            return m(inp)

    want = grads_of(ref_mixer, x.double(), recurrent)
    full = grads_of(mixer, x, lambda m, inp: m(inp))
    assert_close_all(full, want, tol, "full sequence vs float64 recurrent reference")
    sizes = split_sizes(x.shape[1], chunk)
    chunked = grads_of(mixer, x, lambda m, inp: run_in_chunks(m, inp, sizes))
    assert_close_all(chunked, want, tol, f"chunks {sizes} with carried state vs reference")
    tokens = grads_of(mixer, x, lambda m, inp: run_in_chunks(m, inp, [1] * inp.shape[1]))
    assert_close_all(tokens, want, tol, "token by token vs reference")


def _float64_copy(mixer):
    import copy

    ref = copy.deepcopy(mixer).double()
    shared = getattr(mixer, "_shared", None)
    if shared is not None:
        ref.bind_shared(copy.deepcopy(shared).double())
    return ref


def assert_finite_stream(mixer, d_model: int, total: int = 100_000, chunk: int = 4096, batch: int = 1) -> None:
    """Stream ``total`` tokens through ``mixer`` with carried state: no NaN or inf anywhere."""
    gen = torch.Generator().manual_seed(0)
    state = None
    with torch.no_grad():
        for start in range(0, total, chunk):
            x = torch.randn(batch, min(chunk, total - start), d_model, generator=gen)
            y, state = mixer(x, state)
            assert torch.isfinite(y).all(), f"non-finite output at tokens {start}..{start + x.shape[1]}"
            for k, v in flatten_state(state).items():
                if v.is_floating_point():
                    assert torch.isfinite(v).all(), f"non-finite state {k} after {start + x.shape[1]} tokens"


def make_mixer(name: str, d_model: int, options: dict | None = None, layer_idx: int = 1, n_layers: int = 3, seed: int = 0):
    """A registered mixer as the LM would build it, with random shared parameters bound."""
    from torch import nn

    from lamina.config import from_dict
    from lamina.mixers import mixer_class

    torch.manual_seed(seed)
    cls = mixer_class(name)
    mixer = cls(d_model, from_dict(cls.Options, options or {}, name), layer_idx, n_layers)
    if cls.shared_parameters:
        table = {k: nn.Parameter(init(n_layers, d_model) + torch.randn(n_layers, d_model))
                 for k, init in cls.shared_parameters.items()}
        mixer.bind_shared(nn.ParameterDict(table))
    return mixer


def check_masks_are_exact(mixer, x, valid, resets=None, tol: float = 1e-5) -> None:
    """Padding never touches the state and document starts empty it: compare with each row run on its own.

    Row ``b`` alone runs token by token over its real tokens only, from an
    empty state at every document start. The masked batch must give the same
    outputs at real positions, zeros at padded ones, and the same final state.
    """
    B, T = valid.shape
    resets = torch.zeros(B, T, dtype=torch.bool) if resets is None else resets
    with torch.no_grad():
        y, state = mixer(x, valid=valid, resets=resets)
        for b in range(B):
            row_state, outputs = mixer.init_state(1, x.device, x.dtype), []
            for t in range(T):
                if resets[b, t]:
                    row_state = mixer.init_state(1, x.device, x.dtype)
                if valid[b, t]:
                    out, row_state = mixer(x[b : b + 1, t : t + 1], row_state)
                    outputs.append(out[0])
            real = valid[b].nonzero().flatten()
            if outputs:
                want = torch.cat(outputs)
                assert rel_err(y[b, real], want) < tol, f"row {b}: outputs differ by {rel_err(y[b, real], want):.2e}"
            pad = (~valid[b]).nonzero().flatten()
            assert torch.equal(y[b, pad], torch.zeros_like(y[b, pad])), f"row {b}: padded outputs are not zero"
            got = flatten_state(tuple(s[b : b + 1] for s in state))
            for k, v in flatten_state(row_state).items():
                assert rel_err(got[k].double(), v.double()) < tol, f"row {b}: state {k} differs by {rel_err(got[k].double(), v.double()):.2e}"


def check_lm_carries_state(model, length: int = 45, cuts: tuple[int, ...] = (20, 21)) -> None:
    """A whole LM: one full call equals consecutive calls (a single token among them) with carried state."""
    ids = torch.randint(0, model.vocab_size, (2, length), generator=torch.Generator().manual_seed(0))
    bounds = [0, *cuts, length]
    with torch.no_grad():
        full, _ = model(ids)
        pieces, state = [], None
        for a, b in zip(bounds[:-1], bounds[1:]):
            logits, state = model(ids[:, a:b], state)
            pieces.append(logits)
    assert rel_err(torch.cat(pieces, 1), full) < 1e-5


def check_decode_gradients_match(mixer, reference, T: int = 12, d: int | None = None, tol: float = 1e-5) -> None:
    """Token by token (the decode path, fp32) back-propagates like ``reference(mixer, x)`` in float64.

    ``reference`` returns ``(outputs, ...)`` for a float64 ``x [2, T, d]``; the
    input's and every parameter's gradient of a random projection are compared.
    """
    d = d or mixer.d_model
    x = torch.randn(2, T, d, dtype=torch.float64)
    weight = torch.randn(2, T, d, dtype=torch.float64)
    x1 = x.clone().requires_grad_(True)
    (reference(mixer, x1)[0] * weight).sum().backward()
    want = {"x": x1.grad, **{n: p.grad.clone() for n, p in mixer.named_parameters()}}
    mixer.zero_grad()
    x2 = x.float().requires_grad_(True)
    (run_in_chunks(mixer, x2, [1] * T)[0] * weight).sum().backward()
    got = {"x": x2.grad, **{n: p.grad for n, p in mixer.named_parameters()}}
    for name in want:
        err = rel_err(got[name], want[name])
        assert err < tol, f"gradient of {name} differs by {err:.2e}"


def check_memory_changes_at_segment_ends(mixer, memory: int, filled: int, segment: int, T: int = 12) -> None:
    """Decoding one token at a time, ``state[memory]`` changes exactly when the stream completes a segment.

    ``state[filled]`` marks the unfinished segment's slots: it must count the tokens read since the last end.
    """
    x = torch.randn(1, T, mixer.d_model)
    state, seen = None, []
    with torch.no_grad():
        for t in range(T):
            _, state = mixer(x[:, t : t + 1], state)
            seen.append(state[memory].clone())
            assert int(state[filled].sum()) == (t + 1) % segment
    changed = [t + 1 for t in range(1, T) if not torch.equal(seen[t], seen[t - 1])]
    assert not seen[0].any() and changed == list(range(segment, T, segment))


def rotate_vector(x: torch.Tensor, pos: int, base: float = 10000.0) -> torch.Tensor:
    """RoFormer rotation of one vector's channel pairs (n, n + Dh/2) by pos * base^(-2n/Dh), as a plain loop."""
    half = x.shape[0] // 2
    out = x.clone()
    for n in range(half):
        angle = pos * base ** (-2 * n / x.shape[0])
        c, s = math.cos(angle), math.sin(angle)
        out[n] = x[n] * c - x[n + half] * s
        out[n + half] = x[n + half] * c + x[n] * s
    return out


def with_random_lower_bounds(name: str, options, d_model: int, layer_idx: int, n_layers: int, bind: bool = True,
                             seed: int = 0):
    """Layer ``layer_idx`` of an ``n_layers``-deep model of mixer ``name`` (HGRN, HGRN2) whose shared lower-bound
    table holds random values, so every layer's bound differs from the zero-initialised one."""
    torch.manual_seed(seed)
    mixer = mixer_class(name)(d_model, options, layer_idx, n_layers)
    if bind:
        table = type(mixer).shared_parameters[LOWER_BOUNDS](n_layers, d_model)
        mixer.bind_shared(nn.ParameterDict({LOWER_BOUNDS: nn.Parameter(table + torch.randn(table.shape))}))
    return mixer
