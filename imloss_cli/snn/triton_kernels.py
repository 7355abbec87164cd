"""The Triton kernels of the LIF time loops (``triton_lif`` wraps them; its docstring says what they do).

Imported by ``triton_lif._jit`` on first use, not at import time: ``TRITON_INTERPRET=1`` is read when
``triton.jit`` runs, so the tests can set it first (and reload this module) to run the kernels on CPU.
"""

import triton
import triton.language as tl


@triton.jit
def offset(t, stride_t, offs, stride_n):
    """Element offsets of row t, in int64: T*N reaches 2^31 for big layers (ResNet-34's stem at
    T=6 and batch 512), where int32 products would wrap and address the wrong memory."""
    return tl.cast(t, tl.int64) * stride_t + tl.cast(offs, tl.int64) * stride_n


@triton.jit
def fires(v, v_th, STRICT: tl.constexpr):
    if STRICT:
        return (v > v_th).to(tl.float32)
    return (v >= v_th).to(tl.float32)


@triton.jit
def stored(h, dtype: tl.constexpr):
    """fp32 ``h`` as the ``dtype`` value it is stored as, rounded to nearest (ties to even) as torch
    rounds. For bf16 the rounding is written out on the bits: Triton's interpreter truncates where a
    GPU rounds, and the tests run the kernels under the interpreter against torch's loops."""
    if dtype == tl.bfloat16:
        bits = h.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # NaN and inf do not reach a potential
        return bits.to(tl.float32, bitcast=True).to(dtype)  # exact: the low 16 bits are zero
    return h.to(dtype)


@triton.jit
def lif_fwd(
    x_ptr, s_ptr, v_ptr, vsum_ptr, decay_ptr, T, N, stride_xt, stride_xn, decay, gain, v_th,
    SOFT: tl.constexpr, STRICT: tl.constexpr, DECAY_PTR: tl.constexpr, DECAY_INPUT: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.cast(tl.program_id(0), tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    if DECAY_PTR:  # a learned decay is a tensor on the device (no host sync to read it)
        decay = tl.load(decay_ptr).to(tl.float32)
        gain = 1.0 - decay
    h = tl.full(
        [BLOCK], 0.0, tl.float32
    )  # tl.full, not tl.zeros: a @jit helper the interpreter rejects once triton was imported uninterpreted
    o = tl.full([BLOCK], 0.0, tl.float32)
    v_sum = tl.full([BLOCK], 0.0, tl.float32)
    for t in range(T):
        x = tl.load(x_ptr + offset(t, stride_xt, offs, stride_xn), mask=mask, other=0.0).to(tl.float32)
        kept = h - v_th * o if SOFT else h * (1.0 - o)
        x = gain * x if DECAY_INPUT else x  # Fang et al.'s charge scales the input by 1 - decay
        h = decay * kept + x  # at t = 0, h = o = 0: h = x exactly
        v = stored(h, v_ptr.dtype.element_ty)
        o = fires(v, v_th, STRICT)  # read off the stored potential, as backward reads it
        v_sum += h
        row = offset(t, N, offs, 1)
        tl.store(v_ptr + row, v, mask=mask)
        tl.store(s_ptr + row, o.to(s_ptr.dtype.element_ty), mask=mask)
    tl.store(vsum_ptr + offs, v_sum, mask=mask)


@triton.jit
def lif_bwd(
    gs_ptr, gv_ptr, gm_ptr, v_ptr, k_ptr, gx_ptr, decay_ptr, gd_ptr, T, N, stride_gst, stride_gsn, stride_gvt,
    stride_gvn, decay, gain, v_th,
    SOFT: tl.constexpr, DETACH: tl.constexpr, HAS_GV: tl.constexpr, HAS_GM: tl.constexpr, STRICT: tl.constexpr,
    GUO: tl.constexpr, DECAY_PTR: tl.constexpr, DECAY_GRAD: tl.constexpr, DECAY_INPUT: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.cast(tl.program_id(0), tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    k = tl.load(k_ptr).to(tl.float32)
    if DECAY_PTR:
        decay = tl.load(decay_ptr).to(tl.float32)
        gain = 1.0 - decay
    if HAS_GM:
        from_mean = tl.load(gm_ptr).to(tl.float32)  # dL/dv_mean / (T*N), divided on the device
    g = tl.full([BLOCK], 0.0, tl.float32)  # dL/dh[t+1]; zero past the last step
    grad_decay = tl.full([BLOCK], 0.0, tl.float32)  # each neuron's share of dL/d(decay)
    h_next = tl.full([BLOCK], 0.0, tl.float32)  # h[t+1], read one step earlier
    for i in range(T):
        t = T - 1 - i
        row = offset(t, N, offs, 1)
        h = tl.load(v_ptr + row, mask=mask, other=0.0).to(tl.float32)
        o = fires(h, v_th, STRICT)
        grad_o = tl.load(gs_ptr + offset(t, stride_gst, offs, stride_gsn), mask=mask, other=0.0).to(tl.float32)
        if not DETACH:
            grad_o = grad_o - g * (decay * v_th if SOFT else decay * h)
        if GUO:
            # K (1 - tanh(K (s - 1/2))^2) / (2 tanh(K/2)) / (2 V_th) on 0 <= s = h / (2 V_th) <= 1, else 0
            s = h / (2.0 * v_th)
            a = tl.exp(-2.0 * tl.abs(k * (s - 0.5)))
            b = tl.exp(-k)  # tanh(K/2) = (1 - b) / (1 + b)
            inside = ((s >= 0.0) & (s <= 1.0)).to(tl.float32)
            sg = k * (4.0 * a / ((1.0 + a) * (1.0 + a))) * (1.0 + b) / (2.0 * (1.0 - b)) / (2.0 * v_th) * inside
        else:
            # g'(h) = 1/2 K (1 - tanh(z)^2), z = K (h - V_th); 1 - tanh(z)^2 = 4a / (1 + a)^2, a = exp(-2|z|)
            a = tl.exp(-2.0 * tl.abs(k * (h - v_th)))
            sg = 0.5 * k * (4.0 * a / ((1.0 + a) * (1.0 + a)))
        grad_h = grad_o * sg
        # through h[t+1] = decay * r(h[t], o[t]) + x[t+1], the spike held fixed
        grad_h = grad_h + g * (decay if SOFT else decay * (1.0 - o))
        if DECAY_GRAD:  # dh[t+1]/d(decay) = r(h[t], o[t]) (- x[t+1]); g is zero past the last step
            kept = h - v_th * o if SOFT else h * (1.0 - o)
            if DECAY_INPUT:  # r - x[t+1] = (r - h[t+1]) / (1 - decay): x is not saved
                kept = (kept - h_next) / gain
            grad_decay += g * kept
        if HAS_GV:
            grad_h = grad_h + tl.load(gv_ptr + offset(t, stride_gvt, offs, stride_gvn), mask=mask, other=0.0).to(
                tl.float32
            )
        if HAS_GM:
            grad_h = grad_h + from_mean
        grad_x = grad_h * gain if DECAY_INPUT else grad_h
        tl.store(gx_ptr + row, stored(grad_x, gx_ptr.dtype.element_ty), mask=mask)
        g = grad_h
        h_next = h
    if DECAY_GRAD and DECAY_INPUT:  # h[0] = (1 - decay) x[0]: dh[0]/d(decay) = -x[0] = -h[0] / (1 - decay)
        grad_decay -= g * h_next / gain
    if DECAY_GRAD:  # each neuron's share; summed on the device by the caller (tl.sum is a @jit helper the
        # interpreter rejects once triton was imported uninterpreted)
        tl.store(gd_ptr + offs, grad_decay, mask=mask)


@triton.jit
def offset_probe(out_ptr, t, stride_t, stride_n, BLOCK: tl.constexpr):
    """The kernels' row offsets for one t (a test of their arithmetic past 2^31, no memory needed)."""
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, offset(t, stride_t, offs, stride_n))
