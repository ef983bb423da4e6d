"""The Triton kernels behind ``kernels.conv``: implicit-GEMM 3x3 convolutions and the 2x2
transposed convolution on tensor cores, their autotune configurations, and their AOT specs.

Written so that the compiled loops are fast *by construction*, which the SASS gates of
``tests/test_aot.py`` check on a CPU-only machine (``python -m kernels.aot --sass conv``):

- **No synchronous load in a main loop.** Every operand tile is one 16-byte vector per
  thread and row, so Triton's software pipeliner turns it into ``cp.async`` (SASS
  ``LDGSTS``) issued ``num_stages - 1`` K steps ahead, and the ``wgmma`` wait of the loop
  keeps one group in flight. That needs every mask to be constant along the contiguous
  (channel) axis: the weight matrices are zero-padded (rows to a multiple of 64, columns to a
  multiple of 256, the largest blocks) so that weight loads need no mask at all; channel
  counts are *specialised* on (a multiple of 16, which every layer of the SID UNet is) so
  that Triton can prove 16-byte alignment; input K steps never straddle a channel edge
  (``BLOCK_K`` divides the channels, enforced by the configuration pruning).
- **Vector stores.** With ``EVEN_N`` (the output channels a multiple of ``BLOCK_N``) a store's
  mask depends on the pixel only, so rows are written as ``STG.E.128``.
- **Two CTAs per SM** for a configuration of every width: accumulators of at most 64 fp32
  registers per thread (a 128 x 128 tile on 8 warps, 64 x 256 on 4 warps).
- **The first layer's few channels** (4 / 8 / 12, any count not a multiple of 16) are not
  padded to K = 16 per tap: ``_conv3x3_narrow_kernel`` walks K = 9 taps x C as one flat
  dimension (two taps per K = 16 block for C = 8), from a dense NHWC input whose strides it
  derives from the compile-time C (so its 16-byte alignment is provable too).
- **Level 1 reuse** (32 channels: each input pixel is read by 9 taps): the 32-wide
  configurations come with L1-allocating loads (``cache_modifier=".ca"``, SASS ``LDGSTS.E.128``
  instead of ``LDGSTS.E.BYPASS.128``) and channel-chunk-major K order (the 9 taps of one
  channel chunk run back to back, so their overlapping windows are still in L1), beside the
  L2-only variant; the autotuner keeps the faster on the user's GPU.

Sizes that vary per frame (``B``, ``H``, ``W``) are not specialised on, so one compiled
kernel per configuration serves every level of that width and every frame size.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._tuning import FRAME_SIZES, _quick_bench, register

NEGATIVE_SLOPE = 0.2  # LeakyReLU of the SID UNet
# The tensor cores' K step: channel counts of the general kernels are multiples of it.
MIN_K = 16
# Weight matrices are zero-padded to these multiples (rows: the largest BLOCK_K; columns:
# the largest BLOCK_N), so weight tiles are always loaded whole, without masks.
ROW_PAD = 64
COL_PAD = 256

# Each candidate is timed for ~30 ms; results persist per GPU model (kernels._tuning).
_TUNING = {"do_bench": _quick_bench}


# --------------------------------------------------------------------------- configs
def _config(num_warps, num_stages, **meta) -> triton.Config:
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)


# (TILE_H, TILE_W, BLOCK_N, BLOCK_K, warps, stages, A_CACHE). M = TILE_H * TILE_W rows; wgmma
# takes 64 rows per warpgroup of 4 warps. Registers and shared memory per configuration are
# in the SASS report (python -m kernels.aot --sass conv3x3).
CONV_TILES = (
    (8, 8, 256, 32, 4, 4, ""),     # 64 x 256, one warpgroup: 2 CTAs / SM
    (8, 16, 256, 64, 8, 3, ""),    # 128 x 256: the largest tile, 1 CTA / SM
    (8, 16, 256, 32, 8, 4, ""),
    (8, 16, 128, 64, 8, 3, ""),    # 128 x 128: 2 CTAs / SM
    (8, 16, 128, 32, 8, 4, ""),
    (8, 8, 128, 64, 4, 3, ""),
    (8, 16, 64, 64, 4, 3, ""),
    (8, 16, 64, 32, 8, 4, ""),
    (16, 16, 64, 32, 8, 3, ""),    # 256 rows: more pixels per weight tile
    (8, 16, 32, 32, 4, 4, ".ca"),  # level 1: L1-allocating input loads
    (16, 16, 32, 32, 8, 3, ".ca"),
    (8, 16, 32, 32, 4, 4, ""),     # level 1 through L2 only (LDGSTS.BYPASS)
    (8, 16, 64, 16, 4, 4, ""),     # channel counts that are odd multiples of 16
    (8, 16, 32, 16, 4, 4, ""),
)
# (TILE_H, TILE_W, BLOCK_N, BLOCK_K, warps, stages) of the first layer's flat-K kernel.
# K blocks of 16: 9 C = 72 for C = 8 takes 5 steps (10% zero rows); blocks of 32 would pad
# it to 96 (25%), and ptxas unrolls their 4-step loop for C = 12 on sm_80, unpipelined.
NARROW_TILES = (
    (8, 16, 32, 16, 4, 3),
    (16, 16, 32, 16, 8, 3),
    (8, 16, 64, 16, 4, 3),
)
# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) of the transposed convolution.
UPCONV_TILES = (
    (64, 256, 32, 4, 4),
    (128, 256, 32, 8, 4),
    (128, 128, 64, 8, 3),
    (128, 128, 32, 8, 4),
    (128, 64, 64, 4, 3),
    (64, 64, 64, 4, 3),
    (128, 32, 32, 4, 4),
    (64, 32, 32, 4, 4),
    (128, 64, 16, 4, 4),
    (128, 32, 16, 4, 4),
)


def conv_configs() -> list[triton.Config]:
    return [_config(w, s, TILE_H=th, TILE_W=tw, BLOCK_N=bn, BLOCK_K=bk, A_CACHE=cache)
            for th, tw, bn, bk, w, s, cache in CONV_TILES]


def narrow_configs() -> list[triton.Config]:
    return [_config(w, s, TILE_H=th, TILE_W=tw, BLOCK_N=bn, BLOCK_K=bk) for th, tw, bn, bk, w, s in NARROW_TILES]


def upconv_configs() -> list[triton.Config]:
    return [_config(w, s, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk) for bm, bn, bk, w, s in UPCONV_TILES]


def widest_block_n(cout: int, widest: int = 256) -> int:
    """The output block that fits a layer: its width rounded up to a power of two in
    [32, ``widest``] (a wider layer loops over blocks)."""
    return min(widest, max(32, triton.next_power_of_2(int(cout))))


def block_n_choices(cout: int, widest: int = 256) -> tuple[int, ...]:
    """Output blocks tried for a layer: the widest that fits and, for 256 or more channels,
    also 128 (two CTAs per SM with more programs)."""
    bn = widest_block_n(cout, widest)
    return (bn, 128) if bn == 256 else (bn,)


def k_choices(channels: int) -> tuple[int, ...]:
    """K blocks that divide every input's channels: 64 and 32 where they do, 16 only where
    nothing larger does (a K step never straddles a channel edge: no masks on K)."""
    fit = tuple(bk for bk in (64, 32) if channels % bk == 0)
    return fit or (16,)


def prune_conv(configs, named_args, **kwargs):
    """The configurations whose blocks fit the layer: a handful per layer, so the first frame
    compiles and tunes quickly."""
    c1, c2, cout = named_args["C1"], named_args["C2"], named_args["COUT"]
    ks = set(k_choices(c1)) & set(k_choices(c2) if c2 else (64, 32, 16))
    keep = [c for c in configs if c.kwargs["BLOCK_N"] in block_n_choices(cout) and c.kwargs["BLOCK_K"] in ks]
    return keep or [c for c in configs if c.kwargs["BLOCK_K"] == MIN_K][-1:]


def prune_narrow(configs, named_args, **kwargs):
    keep = [c for c in configs if c.kwargs["BLOCK_N"] == widest_block_n(named_args["COUT"], 64)]
    return keep or configs[:1]


def prune_upconv(configs, named_args, **kwargs):
    cin, cout = named_args["CIN"], named_args["COUT"]
    keep = [c for c in configs if c.kwargs["BLOCK_N"] in block_n_choices(cout) and c.kwargs["BLOCK_K"] in k_choices(cin)]
    return keep or [c for c in configs if c.kwargs["BLOCK_K"] == MIN_K and c.kwargs["BLOCK_N"] == 32][-1:]


def _even_n(args) -> bool:
    return args["COUT"] % args["BLOCK_N"] == 0


# --------------------------------------------------------------------------- kernels
@triton.jit
def _tile_pixels(pid_m, W, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """Output pixel (y, x) of each row of the program's ``TILE_H x TILE_W`` tile, rows ordered
    by 2x2 window: row m is window m // 4 (row-major over the tile's windows), position
    m % 4 inside it, so a 2x2 max pooling is a max over 4 consecutive rows."""
    HALF_W: tl.constexpr = TILE_W // 2
    tiles_w = tl.cdiv(W, TILE_W)
    ty = pid_m // tiles_w
    tx = pid_m - ty * tiles_w
    m = tl.arange(0, TILE_H * TILE_W)
    q = m // 4
    y = ty * TILE_H + 2 * (q // HALF_W) + (m % 4) // 2
    x = tx * TILE_W + 2 * (q % HALF_W) + m % 2
    return ty, tx, y, x


@triton.jit
def _epilogue(acc, bias_ptr, rn, b, ty, tx, y, x, H, W, COUT,
              y_ptr, sy_b, sy_h, sy_w, p_ptr, sp_b, sp_h, sp_w,
              POOL: tl.constexpr, NEG_SLOPE: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
              BLOCK_N: tl.constexpr, EVEN_N: tl.constexpr):
    """bias + LeakyReLU in fp32, rounded once at the store; with POOL the 2x2 max too."""
    BLOCK_M: tl.constexpr = TILE_H * TILE_W
    HALF_W: tl.constexpr = TILE_W // 2
    acc += tl.load(bias_ptr + rn)[None, :]  # padded to the block: no mask
    acc = tl.where(acc >= 0.0, acc, acc * NEG_SLOPE)
    inside = (y < H) & (x < W)
    if EVEN_N:  # the mask depends on the pixel only: 16-byte stores
        mask = inside[:, None]
    else:
        mask = inside[:, None] & (rn < COUT)[None, :]
    tl.store(y_ptr + b * sy_b + (y * sy_h + x * sy_w)[:, None] + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)
    if POOL:
        # max of the rounded values = rounded max (rounding is monotone): as max_pool2d of the stored output.
        pooled = tl.max(tl.reshape(acc, (BLOCK_M // 4, 4, BLOCK_N)), axis=1)
        wq = tl.arange(0, BLOCK_M // 4)
        py = ty * (TILE_H // 2) + wq // HALF_W
        px = tx * HALF_W + wq % HALF_W
        p_inside = (py < H // 2) & (px < W // 2)
        if EVEN_N:
            p_mask = p_inside[:, None]
        else:
            p_mask = p_inside[:, None] & (rn < COUT)[None, :]
        tl.store(p_ptr + b * sp_b + (py * sp_h + px * sp_w)[:, None] + rn[None, :], pooled.to(p_ptr.dtype.element_ty),
                 mask=p_mask)


@triton.autotune(configs=conv_configs(), key=["H", "W", "C1", "C2", "COUT", "B"],
                 prune_configs_by={"early_config_prune": prune_conv}, **_TUNING)
@triton.heuristics({"EVEN_N": _even_n})
@triton.jit(do_not_specialize=list(FRAME_SIZES))
def _conv3x3_kernel(
    x1_ptr, s1_b, s1_h, s1_w,
    x2_ptr, s2_b, s2_h, s2_w,
    w_ptr, bias_ptr,
    y_ptr, sy_b, sy_h, sy_w,
    p_ptr, sp_b, sp_h, sp_w,
    B, H, W, C1, C2, COUT, COUT_P,
    HAS_SKIP: tl.constexpr, POOL: tl.constexpr, NEG_SLOPE: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    A_CACHE: tl.constexpr, EVEN_N: tl.constexpr,
):
    """3x3 convolution (zero padding) of ``cat([x1, x2])`` as an implicit GEMM.

    M: the tile's pixels; N: output channels; K: (channel chunk, tap) pairs, chunk-major,
    ``BLOCK_K`` channels per step from x1 (chunks < C1 / BLOCK_K) or x2 (the rest), shifted
    by the tap (zeros outside the image). Weight row of (tap, channel c of the concatenation):
    ``tap * (C1 + C2) + c``.
    """
    pid_m = tl.program_id(0)
    b = tl.program_id(2).to(tl.int64)
    ty, tx, y, x = _tile_pixels(pid_m, W, TILE_H, TILE_W)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    CT = C1 + C2
    first_chunks = C1 // BLOCK_K
    base1 = x1_ptr + b * s1_b
    base2 = x2_ptr + b * s2_b - C1  # chunk * BLOCK_K counts x2's channels from C1
    acc = tl.zeros((TILE_H * TILE_W, BLOCK_N), dtype=tl.float32)
    for kk in range(0, 9 * (CT // BLOCK_K)):
        chunk = kk // 9
        tap = kk - chunk * 9
        yy = y + (tap // 3 - 1)
        xx = x + (tap % 3 - 1)
        inside = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        if HAS_SKIP:
            from_x1 = chunk < first_chunks
            src = tl.where(from_x1, base1, base2)
            row = yy * tl.where(from_x1, s1_h, s2_h) + xx * tl.where(from_x1, s1_w, s2_w)
        else:
            src = base1
            row = yy * s1_h + xx * s1_w
        c = chunk * BLOCK_K + rk
        a = tl.load(src + row[:, None] + c[None, :], mask=inside[:, None], other=0.0, cache_modifier=A_CACHE)
        w = tl.load(w_ptr + (tap * CT + c)[:, None] * COUT_P + rn[None, :])
        acc = tl.dot(a, w, acc)
    _epilogue(acc, bias_ptr, rn, b, ty, tx, y, x, H, W, COUT, y_ptr, sy_b, sy_h, sy_w, p_ptr, sp_b, sp_h, sp_w,
              POOL, NEG_SLOPE, TILE_H, TILE_W, BLOCK_N, EVEN_N)


@triton.autotune(configs=narrow_configs(), key=["H", "W", "COUT", "B"],
                 prune_configs_by={"early_config_prune": prune_narrow}, **_TUNING)
@triton.heuristics({"EVEN_N": _even_n})
@triton.jit(do_not_specialize=list(FRAME_SIZES))
def _conv3x3_narrow_kernel(
    x_ptr, w_ptr, bias_ptr,
    y_ptr, sy_b, sy_h, sy_w,
    p_ptr, sp_b, sp_h, sp_w,
    B, H, W, COUT, COUT_P,
    C: tl.constexpr, POOL: tl.constexpr, NEG_SLOPE: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_N: tl.constexpr,
):
    """3x3 convolution of a dense NHWC input of few channels ``C`` (the first layer): K is
    the flat index ``tap * C + c`` over all 9 taps (the weight matrix's own row order), so a
    K block of 16 holds two taps of 8 channels instead of one tap and 8 zero channels."""
    K_TOTAL: tl.constexpr = 9 * C
    pid_m = tl.program_id(0)
    b = tl.program_id(2).to(tl.int64)
    ty, tx, y, x = _tile_pixels(pid_m, W, TILE_H, TILE_W)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    base = x_ptr + b * H * W * C  # strides from the compile-time C: 16-byte alignment is provable
    pixel = (y * W + x) * C
    acc = tl.zeros((TILE_H * TILE_W, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K_TOTAL, BLOCK_K):
        k = k0 + rk
        tap = k // C
        dy = tap // 3 - 1
        dx = tap % 3 - 1
        yy = y[:, None] + dy[None, :]
        xx = x[:, None] + dx[None, :]
        inside = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W) & (k < K_TOTAL)[None, :]
        a = tl.load(base + pixel[:, None] + ((dy * W + dx) * C + k % C)[None, :], mask=inside, other=0.0)
        w = tl.load(w_ptr + k[:, None] * COUT_P + rn[None, :])  # rows zero-padded past 9 C
        acc = tl.dot(a, w, acc)
    _epilogue(acc, bias_ptr, rn, b, ty, tx, y, x, H, W, COUT, y_ptr, sy_b, sy_h, sy_w, p_ptr, sp_b, sp_h, sp_w,
              POOL, NEG_SLOPE, TILE_H, TILE_W, BLOCK_N, EVEN_N)


@triton.autotune(configs=upconv_configs(), key=["H", "W", "CIN", "COUT", "B"],
                 prune_configs_by={"early_config_prune": prune_upconv}, **_TUNING)
@triton.heuristics({"EVEN_N": _even_n, "EVEN_K": lambda args: args["CIN"] % args["BLOCK_K"] == 0})
@triton.jit(do_not_specialize=list(FRAME_SIZES))
def _upconv2x2_kernel(
    x_ptr, sx_b, sx_h, sx_w,
    w_ptr, bias_ptr,
    y_ptr, sy_b, sy_h, sy_w,
    B, H, W, CIN, COUT, COUT_P,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_N: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """Output phase (dy, dx) = program_id(1) % 4: y[2i + dy, 2j + dx] = x[i, j] @ W[dy, dx] + bias.
    EVEN_K (CIN a multiple of BLOCK_K, every SID UNet layer): no masks on K; otherwise the last
    K step is masked (scalar loads: correct for any CIN, not fast)."""
    pid_n = tl.program_id(1) // 4
    phase = tl.program_id(1) % 4
    dy = phase // 2
    dx = phase % 2
    b = tl.program_id(2).to(tl.int64)
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = m < H * W
    i = m // W
    j = m % W
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    a_row = x_ptr + b * sx_b + (i * sx_h + j * sx_w)[:, None]
    w_rows = w_ptr + (phase * CIN + rk)[:, None] * COUT_P + rn[None, :]
    for k0 in range(0, CIN, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_row + (k0 + rk)[None, :], mask=m_mask[:, None], other=0.0)
            w = tl.load(w_rows + k0 * COUT_P)
        else:
            k_in = (k0 + rk) < CIN
            a = tl.load(a_row + (k0 + rk)[None, :], mask=m_mask[:, None] & k_in[None, :], other=0.0)
            w = tl.load(w_rows + k0 * COUT_P, mask=k_in[:, None], other=0.0)
        acc = tl.dot(a, w, acc)
    acc += tl.load(bias_ptr + rn)[None, :]
    if EVEN_N:
        mask = m_mask[:, None]
    else:
        mask = m_mask[:, None] & (rn < COUT)[None, :]
    tl.store(y_ptr + b * sy_b + ((2 * i + dy) * sy_h + (2 * j + dx) * sy_w)[:, None] + rn[None, :],
             acc.to(y_ptr.dtype.element_ty), mask=mask)


for _tuner in (_conv3x3_kernel, _conv3x3_narrow_kernel, _upconv2x2_kernel):
    register(_tuner)


# --------------------------------------------------------------------------- AOT
def _pointer_and_stride_args(sig: dict) -> tuple:
    """Arguments the JIT specialises on and production passes as multiples of 16 for a 12 MP
    frame of the SID UNet: pointers (16-byte aligned allocations), NHWC strides of
    multiple-of-16 channel counts, the padded weight width, and the channel counts."""
    return tuple(n for n, t in sig.items() if t.startswith("*") or n.startswith("s") or n in ("COUT_P", "C1", "C2",
                                                                                                "CIN", "COUT"))


def aot_specs():
    """Every autotune configuration of every variant, fp16, as ``kernels.aot`` compiles them
    for sm_80 / sm_90 (spills, HGMMA and the SASS gates of ``tests/test_aot.py``). Each spec
    is the specialisation production launches: the per-frame sizes B, H, W are never declared
    divisible (the JIT does not specialise them), and everything declared divisible is a
    multiple of 16 for every SID UNet layer at any frame size."""
    from .aot import AotSpec

    strides = lambda p, dims="bhw": {f"{p}_{d}": "i32" for d in dims}  # noqa: E731
    conv_sig = {"x1_ptr": "*fp16", **strides("s1"), "x2_ptr": "*fp16", **strides("s2"), "w_ptr": "*fp16",
                "bias_ptr": "*fp32", "y_ptr": "*fp16", **strides("sy"), "p_ptr": "*fp16", **strides("sp"),
                "B": "i32", "H": "i32", "W": "i32", "C1": "i32", "C2": "i32", "COUT": "i32", "COUT_P": "i32",
                **{k: "constexpr" for k in ("HAS_SKIP", "POOL", "NEG_SLOPE", "TILE_H", "TILE_W", "BLOCK_N", "BLOCK_K",
                                            "A_CACHE", "EVEN_N")}}
    specs = []
    for i, cfg in enumerate(_conv3x3_kernel.configs):
        for variant, skip, pool in (("plain", False, False), ("pool", False, True), ("skip", True, False)):
            const = {"HAS_SKIP": skip, "POOL": pool, "NEG_SLOPE": NEGATIVE_SLOPE, "EVEN_N": True, **cfg.kwargs}
            specs.append(AotSpec(f"conv3x3_{variant}_cfg{i}", _conv3x3_kernel, conv_sig, const, cfg.num_warps,
                                 divisible_by_16=_pointer_and_stride_args(conv_sig), num_stages=cfg.num_stages,
                                 tensor_cores=True))
    narrow_sig = {"x_ptr": "*fp16", "w_ptr": "*fp16", "bias_ptr": "*fp32", "y_ptr": "*fp16", **strides("sy"),
                  "p_ptr": "*fp16", **strides("sp"), "B": "i32", "H": "i32", "W": "i32", "COUT": "i32", "COUT_P": "i32",
                  **{k: "constexpr" for k in ("C", "POOL", "NEG_SLOPE", "TILE_H", "TILE_W", "BLOCK_N", "BLOCK_K",
                                              "EVEN_N")}}
    for i, cfg in enumerate(_conv3x3_narrow_kernel.configs):
        for channels in (4, 8, 12):  # the first layer of the SID UNet's three input layouts
            const = {"C": channels, "POOL": False, "NEG_SLOPE": NEGATIVE_SLOPE, "EVEN_N": True, **cfg.kwargs}
            specs.append(AotSpec(f"conv3x3_first{channels}_cfg{i}", _conv3x3_narrow_kernel, narrow_sig, const,
                                 cfg.num_warps, divisible_by_16=_pointer_and_stride_args(narrow_sig),
                                 num_stages=cfg.num_stages, tensor_cores=True))
    up_sig = {"x_ptr": "*fp16", **strides("sx"), "w_ptr": "*fp16", "bias_ptr": "*fp32", "y_ptr": "*fp16",
              **strides("sy"), "B": "i32", "H": "i32", "W": "i32", "CIN": "i32", "COUT": "i32", "COUT_P": "i32",
              "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "EVEN_N": "constexpr",
              "EVEN_K": "constexpr"}
    for i, cfg in enumerate(_upconv2x2_kernel.configs):
        specs.append(AotSpec(f"upconv2x2_cfg{i}", _upconv2x2_kernel, up_sig, {"EVEN_N": True, "EVEN_K": True, **cfg.kwargs},
                             cfg.num_warps, divisible_by_16=_pointer_and_stride_args(up_sig),
                             num_stages=cfg.num_stages, tensor_cores=True))
    return specs
