"""Tier 1: pure functions on tensors (no modules, no config, nothing of lamina above).

Layout ``[B, T, ...]``, gates in log space, state accumulated in fp32. Each op
family has a reference (a plain loop), a fast form and a single-step form,
with the signature ``op(..., *, initial_state=None, output_final_state=False)
-> (out, final_state)``. The gate helpers of :mod:`lamina.ops.gates` and the
gated RMSNorm of :mod:`lamina.ops.norm` work per position and have one form.
"""

from lamina.ops.compressive import compressive_memory
from lamina.ops.conv import causal_conv, causal_conv_reference, causal_conv_step
from lamina.ops.decay_bias import forget_bias, segsum
from lamina.ops.delta import delta_rule, delta_rule_chunk, delta_rule_reference, delta_rule_step
from lamina.ops.gates import candidate_g, interpolation_gates, log_sigmoid, lru_normalizer, normalized_gates
from lamina.ops.gla import gla, gla_chunk, gla_reference, gla_step
from lamina.ops.neural_memory import (
    neural_memory,
    neural_memory_chunk,
    neural_memory_reference,
    neural_memory_step,
)
from lamina.ops.norm import gated_rms_norm
from lamina.ops.pooling import pool_groups
from lamina.ops.scan import gated_scan, gated_scan_chunk, gated_scan_reference, gated_scan_step

__all__ = [
    "candidate_g",
    "causal_conv",
    "compressive_memory",
    "causal_conv_reference",
    "causal_conv_step",
    "delta_rule",
    "delta_rule_chunk",
    "delta_rule_reference",
    "delta_rule_step",
    "forget_bias",
    "gla",
    "gla_chunk",
    "gla_reference",
    "gla_step",
    "gated_rms_norm",
    "gated_scan",
    "gated_scan_chunk",
    "gated_scan_reference",
    "gated_scan_step",
    "interpolation_gates",
    "log_sigmoid",
    "lru_normalizer",
    "neural_memory",
    "neural_memory_chunk",
    "neural_memory_reference",
    "neural_memory_step",
    "normalized_gates",
    "pool_groups",
    "segsum",
]
