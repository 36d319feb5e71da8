"""Shared checks that a mixer computes one function in every form.

``full == chunks with carried state == token by token``, for outputs, final
states and gradients (with respect to the input and every parameter).

fp32 against float64: the tolerance
-----------------------------------
DESIGN.md (Numerics) says fp32 paths are under 1e-5 relative error against
float64. That is the typical size, not a bound. The rounding error of an fp32
result is about u = 2^-24 = 6e-8 times a factor that grows with the depth of the
computation (the sequence length, the length of each reduction, the layers)
and with how ill-conditioned the quantity is (a gradient through the norm of a
small vector, a difference of near-equal terms), and its exact value depends on
the kernels the CPU runs (AVX-512 and AVX2 sum in different orders). GLA's input
gradient at T = 1 is such a case: through the RMSNorm of the tiny ``q.k v`` every
fp32 computation of it, the plainest included, is off by 1.4e-5.

So each check measures the problem's own fp32 error. A reference computation of
the same function (the recurrent form, the one-call run, the row run alone) runs
in float64 (``want``) and in fp32 (``own``), and per compared tensor::

    own_err = rel_err(own, want)                  what fp32 costs on this problem, on this CPU
    tol     = max(FP32_TYPICAL, FP32_HEADROOM * own_err)
    assert rel_err(got, want) < tol               for every other fp32 path ``got``

Another fp32 path of the same function rounds differently but works at the same
conditioning, so its error stays within a modest factor of ``own_err``, the
factor its extra depth costs (a chunked form's longer reductions). Over every
check of the mixer and op tests where ``own_err`` exceeds 1e-7 (below that the
floor governs by far) the factor is at most 8 (Titans MAC's chunked form,
parameter gradients), on AVX-512 and on AVX2 kernels alike; FP32_HEADROOM = 30
leaves room for other CPUs. A bug is a change of the function,
not of its rounding: a gate off by 1e-3 or a dropped gradient term moves results
by 1e-4 to 1, above tolerances that are 1e-5 for most checks and at most 5e-4
(GLA's gradients at T = 1, HMT's). ``own_err`` itself must stay under FP32_MAX_OWN: beyond
it the test data is too ill-conditioned for fp32 to resolve anything (or the
reference path lost precision, e.g. a state kept in bf16), and the check fails
saying so instead of loosening without limit. Where the checked path is the
reference path itself (every form at T = 1, the recurrent form), that is all
this bounds; the tests against the papers' equations check those paths with an
independent reference.

bf16 paths keep DESIGN.md's 1e-2: their error is the rounding of the inputs to
bf16 (u = 2^-8), the same on every CPU.
"""

from __future__ import annotations

import copy
import math

import torch

from torch import nn

from lamina.mixers import mixer_class, use_form
from lamina.mixers.parts.lower_bound import LOWER_BOUNDS
from lamina.mixers.state import flatten_state, map_state, rows_of_state


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 (0 when both are zero)."""
    a, b = a.detach().double(), b.detach().double()
    denom = b.norm()
    return float((a - b).norm() / denom) if denom > 0 else float(a.norm())


FP32_TYPICAL = 1e-5  # DESIGN.md: fp32 paths' typical relative error against float64
FP32_HEADROOM = 30.0  # another fp32 path of the same function: within this factor of the reference's own error
FP32_MAX_OWN = 1e-4  # a reference whose own fp32 error exceeds this cannot check anything


def fp32_tolerance(own_err: float, what: str = "", typical: float = FP32_TYPICAL) -> float:
    """The tolerance for fp32 results of a function whose fp32 reference is off by ``own_err`` (see the top).

    ``typical=0`` asks for precision as good as the reference's own, not merely typical.
    """
    assert own_err < FP32_MAX_OWN, (
        f"{what}: the fp32 reference itself is off by {own_err:.2e} from float64: the data is too ill-conditioned "
        f"for fp32 (or the reference path loses precision)")
    return max(typical, FP32_HEADROOM * own_err)


def assert_fp32_close(got: torch.Tensor, want: torch.Tensor, own: torch.Tensor, what: str,
                      typical: float = FP32_TYPICAL) -> None:
    """``got`` (fp32) is as close to ``want`` (float64) as fp32 allows, judged by ``own``: the same function
    computed in fp32 by the reference path."""
    own_err = rel_err(own, want)
    tol = fp32_tolerance(own_err, what, typical)
    err = rel_err(got, want)
    assert err < tol, (f"{what}: relative error {err:.2e} against float64, over the tolerance {tol:.1e} "
                       f"(the fp32 reference's own: {own_err:.1e})")


def assert_all_fp32_close(got, want, own, names, what: str, typical: float = FP32_TYPICAL) -> None:
    """:func:`assert_fp32_close` for each of several named tensors (``None`` where all three are ``None``)."""
    assert len(got) == len(want) == len(own) == len(names)
    for g, w, o, name in zip(got, want, own, names):
        if w is None:
            assert g is None and o is None, f"{what}: {name} is not None"
        else:
            assert_fp32_close(g, w, o, f"{what}: {name}", typical)


def float64_copy(module):
    """A float64 deep copy of a mixer or model (a mixer's shared parameters copied and bound too)."""
    ref = copy.deepcopy(module).double()
    shared = getattr(module, "_shared", None)
    if shared is not None:
        ref.bind_shared(copy.deepcopy(shared).double())
    return ref


def float64_state(state):
    """``state`` with its floating-point tensors in float64 (the others as they are)."""
    return map_state(lambda t: t.double() if t.is_floating_point() else t, state)


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


def assert_close_all(got, want, own, what: str) -> None:
    """Outputs, states and gradients ``(y, states, grad x, grads)`` of an fp32 path against float64 ``want``,
    each within the fp32 tolerance given by ``own``, the fp32 reference path's."""
    got, want, own = (dict(_quantities(r)) for r in (got, want, own))
    assert got.keys() == want.keys() == own.keys(), f"{what}: different states or parameters with gradients"
    for name in want:
        if want[name].is_floating_point():
            assert_fp32_close(got[name], want[name], own[name], f"{what}: {name}")
        else:
            assert torch.equal(got[name], want[name]), f"{what}: {name} differs"


def _quantities(result) -> list[tuple[str, torch.Tensor]]:
    y, states, gx, grads = result
    return [("outputs", y), *((f"state {k}", v) for k, v in sorted(states.items())), ("input gradients", gx),
            *((f"gradient of {k}", v) for k, v in sorted(grads.items()))]


def check_forms_agree(mixer, x, *, chunk: int = 5) -> None:
    """The default form, uneven carried chunks, the recurrent form and T=1 calls all agree.

    The reference is the recurrent form of a float64 copy of the mixer; the fp32
    paths must match it within the tolerance that the recurrent form's own fp32
    error gives (see the top of this module).
    """
    ref_mixer = float64_copy(mixer)

    def recurrent(m, inp):
        with use_form("recurrent"):
            return m(inp)

    want = grads_of(ref_mixer, x.double(), recurrent)
    own = grads_of(mixer, x, recurrent)
    full = grads_of(mixer, x, lambda m, inp: m(inp))
    assert_close_all(full, want, own, "full sequence vs float64 recurrent reference")
    sizes = split_sizes(x.shape[1], chunk)
    chunked = grads_of(mixer, x, lambda m, inp: run_in_chunks(m, inp, sizes))
    assert_close_all(chunked, want, own, f"chunks {sizes} with carried state vs reference")
    tokens = grads_of(mixer, x, lambda m, inp: run_in_chunks(m, inp, [1] * inp.shape[1]))
    assert_close_all(tokens, want, own, "token by token vs reference")


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


def check_masks_are_exact(mixer, x, valid, resets=None) -> None:
    """Padding never touches the state and document starts empty it: compare with each row run on its own.

    Row ``b`` alone runs token by token over its real tokens only, from an
    empty state at every document start. The masked batch must give the same
    outputs at real positions, zeros at padded ones, and the same final state:
    against the row alone in float64, within the tolerance that the row alone in
    fp32 gives (see the top of this module).
    """
    B, T = valid.shape
    resets = torch.zeros(B, T, dtype=torch.bool) if resets is None else resets
    mixer64 = float64_copy(mixer)

    def alone(m, xs, b):
        row_state, outputs = m.init_state(1, xs.device, xs.dtype), []
        for t in range(T):
            if resets[b, t]:
                row_state = m.init_state(1, xs.device, xs.dtype)
            if valid[b, t]:
                out, row_state = m(xs[b : b + 1, t : t + 1], row_state)
                outputs.append(out[0])
        return (torch.cat(outputs) if outputs else None), flatten_state(row_state)

    with torch.no_grad():
        y, state = mixer(x, valid=valid, resets=resets)
        for b in range(B):
            (own, own_state), (want, want_state) = alone(mixer, x, b), alone(mixer64, x.double(), b)
            real = valid[b].nonzero().flatten()
            if want is not None:
                assert_fp32_close(y[b, real], want, own, f"row {b}: outputs")
            pad = (~valid[b]).nonzero().flatten()
            assert torch.equal(y[b, pad], torch.zeros_like(y[b, pad])), f"row {b}: padded outputs are not zero"
            got = flatten_state(rows_of_state(state, slice(b, b + 1)))
            for k, v in want_state.items():
                if v.is_floating_point():
                    assert_fp32_close(got[k], v, own_state[k], f"row {b}: state {k}")
                else:
                    assert torch.equal(got[k], v), f"row {b}: state {k} differs"


def check_lm_carries_state(model, length: int = 45, cuts: tuple[int, ...] = (20, 21)) -> None:
    """A whole LM: one full call equals consecutive calls (a single token among them) with carried state.

    Against the full call in float64, within the tolerance that the full call in fp32 gives.
    """
    ids = torch.randint(0, model.vocab_size, (2, length), generator=torch.Generator().manual_seed(0))
    bounds = [0, *cuts, length]
    with torch.no_grad():
        model64 = float64_copy(model)
        want, _ = model64(ids, model64.init_state(2, dtype=torch.float64))
        full, _ = model(ids)
        pieces, state = [], None
        for a, b in zip(bounds[:-1], bounds[1:]):
            logits, state = model(ids[:, a:b], state)
            pieces.append(logits)
    assert_fp32_close(torch.cat(pieces, 1), want, full, f"calls cut at {cuts}: logits")


def check_decode_gradients_match(mixer, reference, T: int = 12, d: int | None = None) -> None:
    """Token by token (the decode path, fp32) back-propagates like ``reference(mixer, x, dtype)`` in float64.

    ``reference`` returns ``(outputs, ...)`` for ``x [2, T, d]`` in ``dtype``; the
    input's and every parameter's gradient of a random projection are compared,
    within the tolerance that the reference computed in fp32 gives (see the top).
    """
    d = d or mixer.d_model
    x, weight = (torch.randn(2, T, d).double() for _ in range(2))  # the same values in fp32 and float64

    def grads(run, dtype):
        mixer.zero_grad()
        inp = x.detach().to(dtype).clone().requires_grad_(True)
        (run(inp)[0] * weight.to(dtype)).sum().backward()
        return {"x": inp.grad, **{n: p.grad.clone() for n, p in mixer.named_parameters()}}

    want = grads(lambda inp: reference(mixer, inp, torch.float64), torch.float64)
    own = grads(lambda inp: reference(mixer, inp, torch.float32), torch.float32)
    got = grads(lambda inp: run_in_chunks(mixer, inp, [1] * T), torch.float32)
    for name in want:
        assert_fp32_close(got[name], want[name], own[name], f"gradient of {name}")


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
