"""Weight quantization as pure numpy functions (no model, no torch), like torchao's quant_primitives.

Layout contract shared by every function here and by `quantize.matmul_nbits`:
  - A weight is `w` of shape (N, K) = (out_features, in_features), torch's `nn.Linear.weight`.
  - It is blocked along K, the input dim: block j of row n is w[n, j*g : (j+1)*g] (g = group_size;
    the last block may be shorter when g does not divide K). This is ONNX Runtime MatMulNBits'
    and TensorRT's weight-only block layout, so codes and scales go to either without reshuffling.
  - group_size None means one block per row (per-channel).
  - Codes: symmetric -> signed ints in [-qmax, qmax], qmax = 2**(bits-1) - 1 (TensorRT's restricted
    range: -2**(bits-1) is never used, so negating a weight never saturates); asymmetric -> unsigned
    ints in [0, 2**bits - 1].
  - w ~= (q - zero) * scale, with scale and zero of shape (N, n_blocks) (float32; zero is None for
    symmetric). RTN keeps zero integral; HQQ makes it a float (MatMulNBits accepts both).

Methods: RTN (round to nearest), HQQ (half-quadratic optimization of the zero point, no data) and
GPTQ (column-wise rounding with error feedback through the inverse Hessian of calibration inputs).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from rt2edge.errors import ConfigError

SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8)


class QuantizedWeight(NamedTuple):
    """Codes and quantization parameters of one (N, K) weight; unpacks as (q, scale, zero)."""

    q: np.ndarray  # int8 (symmetric) or uint8 (asymmetric), shape (N, K)
    scale: np.ndarray  # float32 (N, n_blocks)
    zero: np.ndarray | None  # float32 (N, n_blocks) in code units; None when symmetric

    @property
    def symmetric(self) -> bool:
        return self.zero is None


# ------------------------------------------------------------------------------------ helpers
def _check_weight(w: np.ndarray, bits: int, group_size: int | None) -> np.ndarray:
    arr = np.asarray(w)
    if arr.ndim != 2 or 0 in arr.shape:
        raise ConfigError("weight", f"expected a non-empty 2-D (out, in) matrix, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)):
        raise ConfigError("weight", "must be a finite floating-point array")
    if bits not in SUPPORTED_BITS:
        raise ConfigError("bits", f"must be one of {SUPPORTED_BITS}, got {bits!r}")
    if group_size is not None and (not isinstance(group_size, (int, np.integer)) or group_size < 1):
        raise ConfigError("group_size", f"must be None (per-channel) or an int >= 1, got {group_size!r}")
    return arr.astype(np.float32, copy=False)


def num_blocks(k: int, group_size: int | None) -> int:
    return 1 if group_size is None else -(-k // group_size)


def _grouped(w: np.ndarray, group_size: int | None, fill: float = np.nan) -> np.ndarray:
    """(N, K) -> (N, n_blocks, g), the tail of a short last block padded with `fill`."""
    n, k = w.shape
    g = k if group_size is None else group_size
    nb = num_blocks(k, group_size)
    if nb * g != k:
        w = np.concatenate([w, np.full((n, nb * g - k), fill, dtype=w.dtype)], axis=1)
    return w.reshape(n, nb, g)


def expand_blocks(params: np.ndarray, k: int, group_size: int | None) -> np.ndarray:
    """(N, n_blocks) per-block parameters -> (N, K), one value per weight."""
    g = k if group_size is None else group_size
    return np.repeat(params, g, axis=1)[:, :k]


def code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        return -qmax, qmax
    return 0, 2**bits - 1


def _code_dtype(symmetric: bool) -> type:
    return np.int8 if symmetric else np.uint8


def rtn_params(w: np.ndarray, bits: int, group_size: int | None, symmetric: bool
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """Round-to-nearest scale (and integral zero) per block, from the block's range."""
    blocks = _grouped(w, group_size)
    lo, hi = code_range(bits, symmetric)
    if symmetric:
        absmax = np.nanmax(np.abs(blocks), axis=-1)
        return np.where(absmax > 0, absmax / hi, 1.0).astype(np.float32), None
    # The range always contains 0 (ONNX Runtime's convention), so 0.0 is exactly representable
    # (padding, pruned weights) and the integral zero point always lies inside [lo, hi].
    mn = np.minimum(np.nanmin(blocks, axis=-1), 0.0)
    mx = np.maximum(np.nanmax(blocks, axis=-1), 0.0)
    scale = np.where(mx > mn, (mx - mn) / (hi - lo), 1.0).astype(np.float32)
    zero = np.clip(np.rint(-mn / scale), lo, hi).astype(np.float32)
    return scale, zero


def quantize_with_params(w: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, bits: int,
                         group_size: int | None) -> np.ndarray:
    """Codes of `w` for given block parameters (round to nearest, clipped to the code range)."""
    k = w.shape[1]
    lo, hi = code_range(bits, zero is None)
    q = w / expand_blocks(scale, k, group_size)
    if zero is not None:
        q = q + expand_blocks(zero, k, group_size)
    return np.clip(np.rint(q), lo, hi).astype(_code_dtype(zero is None))


# ------------------------------------------------------------------------------------ public API
def quantize_weight(w: np.ndarray, bits: int, group_size: int | None = None,
                    symmetric: bool = True) -> QuantizedWeight:
    """RTN: int8 per-channel (`bits=8, group_size=None`), int4 per-group (`bits=4, group_size=32..128`)."""
    w = _check_weight(w, bits, group_size)
    scale, zero = rtn_params(w, bits, group_size, symmetric)
    return QuantizedWeight(quantize_with_params(w, scale, zero, bits, group_size), scale, zero)


def dequantize_weight(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None = None,
                      group_size: int | None = None) -> np.ndarray:
    """(q - zero) * scale as float32 (N, K); the inverse of every quantizer here."""
    k = q.shape[1]
    if scale.shape != (q.shape[0], num_blocks(k, group_size)):
        raise ConfigError("scale", f"shape {scale.shape} does not match codes {q.shape} "
                                   f"with group_size {group_size}")
    codes = q.astype(np.float32)
    if zero is not None:
        codes = codes - expand_blocks(zero.astype(np.float32), k, group_size)
    return codes * expand_blocks(scale.astype(np.float32), k, group_size)


def fake_quantize(w: np.ndarray, bits: int, group_size: int | None = None, symmetric: bool = True) -> np.ndarray:
    """RTN quantize + dequantize: what the quantized model computes with."""
    qw = quantize_weight(w, bits, group_size, symmetric)
    return dequantize_weight(qw.q, qw.scale, qw.zero, group_size)


# ------------------------------------------------------------------------------------ HQQ
def hqq_quantize_weight(w: np.ndarray, bits: int = 4, group_size: int | None = 64, iters: int = 20,
                        lp_norm: float = 0.7, beta: float = 10.0, kappa: float = 1.01) -> QuantizedWeight:
    """Half-Quadratic Quantization (Badri & Shaji 2023): asymmetric codes, zero point optimized.

    Minimizes sum |w - dequant(quant(w))|^p with p < 1 (a sparsity-promoting norm: a few outliers
    may keep a large error so that the bulk of the block fits the grid) by alternating
    (1) the codes, (2) a shrinkage of the error (the proximal step of |.|^p) and (3) the zero point
    in closed form. The scale stays at min-max; the zero becomes a float. Needs no data.
    """
    w = _check_weight(w, bits, group_size)
    blocks = _grouped(w, group_size)  # (N, nb, g), NaN padding
    valid = ~np.isnan(blocks)
    x = np.where(valid, blocks, 0.0).astype(np.float64)
    lo, hi = code_range(bits, symmetric=False)
    mn = np.nanmin(blocks, axis=-1, keepdims=True).astype(np.float64)
    mx = np.nanmax(blocks, axis=-1, keepdims=True).astype(np.float64)
    scale = np.where(mx > mn, (mx - mn) / (hi - lo), 1.0)
    zero = np.rint(-mn / scale)
    count = valid.sum(axis=-1, keepdims=True)

    def shrink(err: np.ndarray, b: float) -> np.ndarray:
        # Generalized soft threshold: the proximal operator of |.|^p (p = 1: the usual soft threshold).
        mag = np.abs(err)
        return np.sign(err) * np.maximum(mag - (1.0 / b) * np.power(mag + 1e-8, lp_norm - 1.0), 0.0)

    best_zero, best_err = zero, np.inf
    for _ in range(iters):
        q = np.clip(np.rint(x / scale + zero), lo, hi)
        err = x - (q - zero) * scale
        current = float(np.abs(err[valid]).mean())
        if current >= best_err:
            break  # HQQ's own stopping rule: the first iteration that does not improve
        best_zero, best_err = zero, current
        e = shrink(err, beta)
        # argmin_z sum (q - z - (x - e)/s)^2 over the block's valid entries.
        target = np.where(valid, q - (x - e) / scale, 0.0)
        zero = target.sum(axis=-1, keepdims=True) / count
        beta *= kappa
    scale32 = scale[..., 0].astype(np.float32)
    zero32 = best_zero[..., 0].astype(np.float32)
    return QuantizedWeight(quantize_with_params(w, scale32, zero32, bits, group_size), scale32, zero32)


# ------------------------------------------------------------------------------------ GPTQ
def gptq_quantize_weight(w: np.ndarray, inputs: np.ndarray, bits: int = 4, group_size: int | None = 128,
                         symmetric: bool = True, damp: float = 0.01, block: int = 128) -> QuantizedWeight:
    """GPTQ (Frantar et al. 2022): quantize columns in order, pushing each column's rounding error
    onto the not-yet-quantized columns through the inverse Hessian H = 2 X^T X / n of the layer's
    calibration `inputs` X (n, K). Minimizes the *output* error ||X w^T - X w_q^T||, not the
    weight error. Block parameters are chosen (RTN) when the block's first column is reached, on
    the already error-corrected weights ("static groups" off, no act-order: codes stay in the
    MatMulNBits block layout without a permutation).
    """
    w = _check_weight(w, bits, group_size)
    x = np.asarray(inputs, dtype=np.float64)
    n_out, k = w.shape
    if x.ndim != 2 or x.shape[1] != k or x.shape[0] < 1:
        raise ConfigError("inputs", f"expected calibration activations of shape (n, {k}), got {x.shape}")
    if not 0.0 < damp < 1.0:
        raise ConfigError("damp", f"must be in (0, 1), got {damp}")
    g = k if group_size is None else group_size
    hessian = 2.0 * (x.T @ x) / x.shape[0]
    dead = np.diag(hessian) == 0  # inputs that are always 0: their weights never matter
    hessian[dead, dead] = 1.0
    weights = w.astype(np.float64)
    weights[:, dead] = 0.0
    hessian += damp * np.mean(np.diag(hessian)) * np.eye(k)
    # Upper Cholesky factor of H^-1: row i holds the update coefficients for columns > i.
    hinv = np.linalg.cholesky(np.linalg.inv(hessian)).T

    lo, hi = code_range(bits, symmetric)
    codes = np.zeros((n_out, k), dtype=np.float64)
    nb = num_blocks(k, group_size)
    scale = np.zeros((n_out, nb), dtype=np.float64)
    zero = None if symmetric else np.zeros((n_out, nb), dtype=np.float64)
    # A lazy-update block is a whole number of groups, so a group's columns are all current
    # (corrected by every earlier column) when its parameters are chosen.
    step = g * max(1, block // g) if g < k else k
    for b0 in range(0, k, step):
        b1 = min(b0 + step, k)
        wb = weights[:, b0:b1].copy()
        errs = np.zeros_like(wb)
        hb = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if col % g == 0:
                j = col // g
                s, z = rtn_params(wb[:, i:i + g].astype(np.float32), bits, None, symmetric)
                scale[:, j] = s[:, 0]
                if zero is not None:
                    zero[:, j] = z[:, 0]
            j = col // g
            z_col = 0.0 if zero is None else zero[:, j]
            q = np.clip(np.rint(wb[:, i] / scale[:, j] + z_col), lo, hi)
            codes[:, col] = q
            err = (wb[:, i] - (q - z_col) * scale[:, j]) / hb[i, i]
            wb[:, i:] -= np.outer(err, hb[i, i:])
            errs[:, i] = err
        weights[:, b1:] -= errs @ hinv[b0:b1, b1:]
    return QuantizedWeight(codes.astype(_code_dtype(symmetric)), scale.astype(np.float32),
                           None if zero is None else zero.astype(np.float32))


def reconstruction_error(w: np.ndarray, qw: QuantizedWeight, group_size: int | None,
                         inputs: np.ndarray | None = None) -> dict[str, float]:
    """Weight error (mean |.|, RMS, max) and, given inputs X (n, K), the relative output error
    ||X w^T - X w_q^T||_F / ||X w^T||_F that a layer actually sees."""
    deq = dequantize_weight(qw.q, qw.scale, qw.zero, group_size).astype(np.float64)
    diff = np.asarray(w, np.float64) - deq
    out = {"weight_mae": float(np.abs(diff).mean()), "weight_rmse": float(np.sqrt((diff ** 2).mean())),
           "weight_max": float(np.abs(diff).max())}
    if inputs is not None:
        x = np.asarray(inputs, np.float64)
        ref = x @ np.asarray(w, np.float64).T
        out["output_rel"] = float(np.linalg.norm(x @ diff.T) / max(np.linalg.norm(ref), 1e-30))
    return out
