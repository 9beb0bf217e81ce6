"""ActionTokenizer: continuous robot actions <-> tokens of a VLM's vocabulary (numpy only).

This is the contract every stage and the robot runtime share. An action is a float vector of
`num_dims` continuous dims (RT-2: x, y, z, roll, pitch, yaw, gripper), optionally followed by a
terminate flag in {0, 1}. Each continuous dim is normalized to [-1, 1] with dataset statistics and
split into `n_bins` uniform bins; each bin is written as one token id of the VLM's vocabulary.

Token-id strategies (how bin index b in [0, n_bins) becomes a vocabulary id):
  last           OpenVLA: id = vocab_size - 1 - b, i.e. the last n_bins ids of the vocabulary.
  least_frequent RT-2 / PaLM-E: the n_bins ids used least often on a text corpus (ascending
                 frequency, ties broken by id), special tokens excluded.
  append         n_bins new ids after the text vocabulary: id = vocab_size + b (the caller resizes
                 the embeddings to `total_vocab_size`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from rt2edge.errors import ActionValueError

FORMAT_VERSION = 1
STRATEGIES = ("last", "least_frequent", "append")
NORMALIZATIONS = ("q01_q99", "min_max", "none")
DEFAULT_DIM_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")


@dataclass(frozen=True)
class ActionStatistics:
    """Per-dim statistics of the training actions (continuous dims only, no terminate flag)."""

    q01: np.ndarray
    q99: np.ndarray
    min: np.ndarray
    max: np.ndarray
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def __post_init__(self) -> None:
        arrays = {}
        for name in ("q01", "q99", "min", "max", "mean", "std"):
            value = getattr(self, name)
            if value is None:
                continue
            arr = np.asarray(value, dtype=np.float64)
            if arr.ndim != 1:
                raise ActionValueError(f"statistics '{name}' must be 1-D, got shape {arr.shape}")
            if not np.all(np.isfinite(arr)):
                bad = int(np.flatnonzero(~np.isfinite(arr))[0])
                raise ActionValueError(f"statistics '{name}' is not finite", dim=bad)
            arrays[name] = arr
        sizes = {name: arr.shape[0] for name, arr in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise ActionValueError(f"statistics arrays disagree on the number of dims: {sizes}")
        # [Contract] low <= high with a finite span, or the bin edges (and so every action's
        # bounds) are inverted or NaN.
        for low, high in (("q01", "q99"), ("min", "max")):
            with np.errstate(over="ignore"):  # an overflow is exactly what is refused here
                span = arrays[high] - arrays[low]
            bad = np.flatnonzero(~(span >= 0) | ~np.isfinite(span))
            if bad.size:
                i = int(bad[0])
                raise ActionValueError(f"statistics '{low}' ({arrays[low][i]}) must be <= '{high}' ({arrays[high][i]}) "
                                       "with a finite difference", dim=i)
        for name, arr in arrays.items():
            object.__setattr__(self, name, arr)

    @property
    def num_dims(self) -> int:
        return int(self.q01.shape[0])

    @classmethod
    def from_actions(cls, actions: np.ndarray) -> ActionStatistics:
        """Compute statistics from an (N, num_dims) array of continuous actions."""
        arr = np.asarray(actions, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise ActionValueError(f"expected a non-empty (N, dims) array, got shape {arr.shape}")
        return cls(
            q01=np.quantile(arr, 0.01, axis=0),
            q99=np.quantile(arr, 0.99, axis=0),
            min=arr.min(axis=0),
            max=arr.max(axis=0),
            mean=arr.mean(axis=0),
            std=arr.std(axis=0),
        )

    def to_dict(self) -> dict[str, list[float]]:
        out = {"q01": self.q01, "q99": self.q99, "min": self.min, "max": self.max}
        if self.mean is not None:
            out["mean"] = self.mean
        if self.std is not None:
            out["std"] = self.std
        return {k: [float(x) for x in v] for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[float]]) -> ActionStatistics:
        missing = [k for k in ("q01", "q99", "min", "max") if k not in data]
        if missing:
            raise ActionValueError(f"statistics lack keys {missing}")
        return cls(**{k: np.asarray(v) for k, v in data.items() if k in
                      ("q01", "q99", "min", "max", "mean", "std")})


def least_frequent_token_ids(
    counts: np.ndarray, n: int, exclude_ids: Iterable[int] = ()
) -> np.ndarray:
    """The `n` ids with the lowest corpus counts (RT-2 / PaLM-E), special tokens excluded.

    `counts[i]` is how often id i occurred when the text corpus was tokenized. Ties are broken by
    the smaller id so the choice is deterministic across machines.
    """
    counts = np.asarray(counts)
    if counts.ndim != 1:
        raise ActionValueError(f"counts must be 1-D (one per vocabulary id), got {counts.shape}")
    eligible = np.ones(counts.shape[0], dtype=bool)
    excluded = np.asarray(list(exclude_ids), dtype=np.int64)
    eligible[excluded[(excluded >= 0) & (excluded < counts.shape[0])]] = False
    ids = np.flatnonzero(eligible)
    if ids.shape[0] < n:
        raise ActionValueError(
            f"vocabulary has {ids.shape[0]} eligible ids, fewer than the {n} action bins needed"
        )
    order = np.lexsort((ids, counts[ids]))  # primary key: count, secondary: id
    return ids[order[:n]].astype(np.int64)


@dataclass
class ActionTokenizer:
    """Maps actions to token ids and back. See the module docstring for the strategies.

    Args:
        vocab_size: size of the text vocabulary the ids live in (before any `append`).
        statistics: dataset statistics of the continuous dims; None means the actions are already
            in [-1, 1] (no normalization).
        normalization: "q01_q99" (OpenVLA), "min_max" (RT-2) or "none".
        normalize_mask: per continuous dim, False leaves that dim unnormalized (OpenVLA's gripper).
        terminate: the action carries a trailing terminate flag, written as one extra token.
        token_ids: the explicit bin -> id table, required for "least_frequent".
    """

    vocab_size: int
    num_dims: int = 7
    n_bins: int = 256
    strategy: str = "last"
    normalization: str = "q01_q99"
    statistics: ActionStatistics | None = None
    normalize_mask: np.ndarray | None = None
    terminate: bool = True
    dim_names: tuple[str, ...] | None = None
    token_ids: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ActionValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ActionValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}"
            )
        if self.num_dims < 1:
            raise ActionValueError(f"num_dims must be >= 1, got {self.num_dims}")
        if self.n_bins < 2 or (self.strategy != "append" and self.n_bins > self.vocab_size):
            raise ActionValueError(f"n_bins must be in [2, vocab_size], got {self.n_bins}")
        if self.normalization != "none" and self.statistics is None:
            raise ActionValueError(f"normalization {self.normalization!r} needs statistics")
        if self.statistics is not None and self.statistics.num_dims != self.num_dims:
            raise ActionValueError(
                f"statistics have {self.statistics.num_dims} dims, tokenizer has {self.num_dims}"
            )
        mask = np.ones(self.num_dims, dtype=bool) if self.normalize_mask is None else (
            np.asarray(self.normalize_mask, dtype=bool))
        if mask.shape != (self.num_dims,):
            raise ActionValueError(f"normalize_mask must have shape ({self.num_dims},), got {mask.shape}")
        self.normalize_mask = mask
        if self.dim_names is None:
            self.dim_names = (DEFAULT_DIM_NAMES if self.num_dims == len(DEFAULT_DIM_NAMES)
                              else tuple(f"dim{i}" for i in range(self.num_dims)))
        self.dim_names = tuple(self.dim_names)
        if len(self.dim_names) != self.num_dims:
            raise ActionValueError(f"dim_names has {len(self.dim_names)} names for {self.num_dims} dims")
        self.token_ids = self._resolve_token_ids(self.token_ids)
        # [Contract] OpenVLA's binning: n_bins uniform edges on [-1, 1]; a normalized value a falls
        # in bin b = digitize(a, edges) - 1 in [0, n_bins - 1]; it decodes to the center of the
        # (n_bins - 1) intervals between edges, with b clipped to [0, n_bins - 2].
        self.bin_edges = np.linspace(-1.0, 1.0, self.n_bins)
        self.bin_centers = (self.bin_edges[:-1] + self.bin_edges[1:]) / 2.0
        self._id_to_bin = {int(t): b for b, t in enumerate(self.token_ids)}
        self._low, self._high = self._bounds()

    # ----------------------------------------------------------------------------- token table
    def _resolve_token_ids(self, token_ids: np.ndarray | None) -> np.ndarray:
        if self.strategy == "last":
            # [Contract] OpenVLA: token id = vocab_size - digitize(a) = vocab_size - 1 - b.
            expected = self.vocab_size - 1 - np.arange(self.n_bins, dtype=np.int64)
        elif self.strategy == "append":
            expected = self.vocab_size + np.arange(self.n_bins, dtype=np.int64)
        else:
            if token_ids is None:
                raise ActionValueError(
                    "strategy 'least_frequent' needs token_ids (see least_frequent_token_ids)"
                )
            expected = None
        ids = expected if token_ids is None else np.asarray(token_ids, dtype=np.int64)
        if expected is not None and not np.array_equal(ids, expected):
            raise ActionValueError(f"token_ids do not match strategy {self.strategy!r}")
        if ids.shape != (self.n_bins,) or len(np.unique(ids)) != self.n_bins:
            raise ActionValueError(f"token_ids must be {self.n_bins} distinct ids")
        if ids.min() < 0 or ids.max() >= self.total_vocab_size:
            raise ActionValueError(f"token_ids must lie in [0, {self.total_vocab_size})")
        return ids

    @property
    def total_vocab_size(self) -> int:
        """Vocabulary size the model needs: vocab_size, plus n_bins for the `append` strategy."""
        return self.vocab_size + (self.n_bins if self.strategy == "append" else 0)

    @property
    def allowed_ids(self) -> np.ndarray:
        """The ids eligible at an action step of constrained decoding, in bin order."""
        return self.token_ids.copy()

    @property
    def tokens_per_action(self) -> int:
        return self.num_dims + int(self.terminate)

    @property
    def action_dim(self) -> int:
        """Length of an action vector: the continuous dims plus the terminate flag, if any."""
        return self.tokens_per_action

    # ----------------------------------------------------------------------------- normalization
    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        if self.normalization == "none" or self.statistics is None:
            return -np.ones(self.num_dims), np.ones(self.num_dims)
        stats = self.statistics
        if self.normalization == "q01_q99":
            return stats.q01.copy(), stats.q99.copy()
        return stats.min.copy(), stats.max.copy()

    @property
    def action_low(self) -> np.ndarray:
        """Lowest value each continuous dim can decode to (real units)."""
        return np.where(self.normalize_mask, self._unnormalize(np.full(self.num_dims, -1.0)), -1.0)

    @property
    def action_high(self) -> np.ndarray:
        return np.where(self.normalize_mask, self._unnormalize(np.full(self.num_dims, 1.0)), 1.0)

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """Real units -> [-1, 1] (clipped). Dims whose low == high map to 0."""
        low, high = self._low, self._high
        span = high - low
        degenerate = span <= 0
        safe_span = np.where(degenerate, 1.0, span)
        normed = 2.0 * (actions - low) / safe_span - 1.0
        normed = np.where(degenerate, 0.0, normed)
        normed = np.where(self.normalize_mask, normed, actions)
        return np.clip(normed, -1.0, 1.0)

    def _unnormalize(self, normed: np.ndarray) -> np.ndarray:
        low, high = self._low, self._high
        real = 0.5 * (normed + 1.0) * (high - low) + low
        return np.where(self.normalize_mask, real, normed)

    # ----------------------------------------------------------------------------- encode / decode
    def _check_actions(self, actions: Any) -> np.ndarray:
        arr = np.asarray(actions, dtype=np.float64) if not isinstance(actions, np.ndarray) else (
            actions.astype(np.float64, copy=False))
        if arr.ndim == 0 or arr.shape[-1] != self.action_dim:
            raise ActionValueError(
                f"expected actions of shape (..., {self.action_dim}) "
                f"({self.num_dims} dims{' + terminate' if self.terminate else ''}), got {arr.shape}"
            )
        finite = np.isfinite(arr)
        if not finite.all():
            dim = int(np.argwhere(~finite)[0][-1])
            raise ActionValueError("value is NaN or infinite", dim=dim, dim_name=self.name_of(dim))
        return arr

    def name_of(self, dim: int) -> str:
        return self.dim_names[dim] if dim < self.num_dims else "terminate"

    def encode_bins(self, actions: Any) -> np.ndarray:
        """Actions (..., action_dim) in real units -> bin indices (..., tokens_per_action)."""
        arr = self._check_actions(actions)
        normed = self.normalize(arr[..., : self.num_dims])
        # digitize is in [1, n_bins] for values in [-1, 1]; the clip maps it to [0, n_bins - 1].
        bins = np.clip(np.digitize(normed, self.bin_edges) - 1, 0, self.n_bins - 1)
        if self.terminate:
            # [Contract] terminate is one token: bin 0 = continue, bin n_bins - 1 = terminate.
            flag = np.where(arr[..., self.num_dims] >= 0.5, self.n_bins - 1, 0)
            bins = np.concatenate([bins, flag[..., None]], axis=-1)
        return bins.astype(np.int64)

    def encode(self, actions: Any) -> np.ndarray:
        """Actions (..., action_dim) in real units -> token ids (..., tokens_per_action)."""
        return self.token_ids[self.encode_bins(actions)]

    def decode_bins(self, bins: Any) -> np.ndarray:
        """Bin indices (..., tokens_per_action) -> actions (..., action_dim) in real units."""
        arr = np.asarray(bins)
        if arr.ndim == 0 or arr.shape[-1] != self.tokens_per_action:
            raise ActionValueError(
                f"expected bins of shape (..., {self.tokens_per_action}), got {arr.shape}"
            )
        if not np.issubdtype(arr.dtype, np.integer):
            raise ActionValueError(f"bins must be integers, got dtype {arr.dtype}")
        bad = (arr < 0) | (arr >= self.n_bins)
        if bad.any():
            dim = int(np.argwhere(bad)[0][-1])
            raise ActionValueError(f"bin out of range [0, {self.n_bins})", dim=dim,
                                   dim_name=self.name_of(dim))
        continuous = self.bin_centers[np.clip(arr[..., : self.num_dims], 0, self.n_bins - 2)]
        out = self._unnormalize(continuous)
        if self.terminate:
            flag = (arr[..., self.num_dims] >= self.n_bins // 2).astype(np.float64)
            out = np.concatenate([out, flag[..., None]], axis=-1)
        return out

    def ids_to_bins(self, token_ids: Any) -> np.ndarray:
        """Token ids -> bin indices; a non-action id raises ActionValueError naming its position."""
        arr = np.asarray(token_ids)
        if not np.issubdtype(arr.dtype, np.integer):
            raise ActionValueError(f"token ids must be integers, got dtype {arr.dtype}")
        if self.strategy == "last":
            bins = self.vocab_size - 1 - arr
        elif self.strategy == "append":
            bins = arr - self.vocab_size
        else:
            lookup = np.vectorize(lambda t: self._id_to_bin.get(int(t), -1), otypes=[np.int64])
            bins = lookup(arr) if arr.size else arr.astype(np.int64)
        bad = (bins < 0) | (bins >= self.n_bins)
        if bad.any():
            pos = tuple(int(i) for i in np.argwhere(bad)[0])
            dim = pos[-1] if arr.ndim else None
            raise ActionValueError(f"token id {int(arr[pos])} is not an action token",
                                   dim=dim, dim_name=None if dim is None else self.name_of(dim))
        return bins.astype(np.int64)

    def decode(self, token_ids: Any) -> np.ndarray:
        """Token ids (..., tokens_per_action) -> actions (..., action_dim) in real units."""
        return self.decode_bins(self.ids_to_bins(token_ids))

    # ----------------------------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "vocab_size": int(self.vocab_size),
            "num_dims": int(self.num_dims),
            "n_bins": int(self.n_bins),
            "strategy": self.strategy,
            "normalization": self.normalization,
            "statistics": None if self.statistics is None else self.statistics.to_dict(),
            "normalize_mask": [bool(x) for x in self.normalize_mask],
            "terminate": bool(self.terminate),
            "dim_names": list(self.dim_names),
            "token_ids": [int(x) for x in self.token_ids],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActionTokenizer:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ActionValueError(
                f"action tokenizer format_version {version!r} is not supported "
                f"(this rt2edge reads version {FORMAT_VERSION})"
            )
        stats = data.get("statistics")
        return cls(
            vocab_size=int(data["vocab_size"]),
            num_dims=int(data["num_dims"]),
            n_bins=int(data["n_bins"]),
            strategy=str(data["strategy"]),
            normalization=str(data["normalization"]),
            statistics=None if stats is None else ActionStatistics.from_dict(stats),
            normalize_mask=np.asarray(data["normalize_mask"], dtype=bool),
            terminate=bool(data["terminate"]),
            dim_names=tuple(data["dim_names"]),
            token_ids=np.asarray(data["token_ids"], dtype=np.int64),
        )
