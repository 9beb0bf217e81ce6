"""Action fidelity of a quantized (or exported) policy against its reference, open loop.

Both policies see the same observations; we compare the action tokens they choose and the actions
those tokens decode to in real units (via the shared ActionTokenizer):
  token_agreement     fraction of action tokens that are equal (RT-2's per-dim argmax)
  action_agreement    fraction of observations whose whole action (every token) is equal
  per dim             agreement, mean / max |bin difference|, mean / max |action difference| in
                      the dim's own units (the terminate flag is 0/1)
A token function that returns a row of -1 (e.g. the runtime's safe fallback) counts as
disagreeing and is left out of the error statistics (`invalid_*`). Closed-loop success is bench's.

Where both sides expose their action logits (teacher-forced on the reference's own tokens, so both
see the same prefix), `compare_logits` adds a continuous measure: KL(reference || candidate) of the
n_bins-way distributions, the logit error, and the reference's top-1 margin. Token agreement of a
model with near-flat logits (random weights) flips on noise; the logit error does not.

    report = compare_token_fns(policy_token_fn(fp32), policy_token_fn(int4), observations, tokenizer)
    report.write(folder)  # fidelity.json (source of truth) + fidelity.md
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from rt2edge.actions import ActionTokenizer
from rt2edge.atomic import atomic_write_json, atomic_write_text
from rt2edge.errors import ConfigError, InputError
from quantize.registry import LogitFn, Observation, TokenFn


@dataclass(frozen=True)
class FidelityReport:
    n_observations: int
    dim_names: list[str]
    dim_range: list[float]  # action_high - action_low per dim (1.0 for terminate)
    token_agreement: float
    action_agreement: float
    per_dim_agreement: list[float]
    mean_bin_distance: list[float]
    max_bin_distance: list[int]
    mean_abs_error: list[float]
    max_abs_error: list[float]
    invalid_reference: int
    invalid_candidate: int
    distinct_reference_actions: int  # 1 = the reference ignores its input: agreement says nothing

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self, title: str = "Action fidelity") -> str:
        lines = [f"## {title}", "",
                 f"{self.n_observations} observations; token agreement **{self.token_agreement:.1%}**, "
                 f"whole-action agreement **{self.action_agreement:.1%}**"
                 + (f"; invalid: reference {self.invalid_reference}, candidate {self.invalid_candidate}"
                    if self.invalid_reference or self.invalid_candidate else "")
                 + f"; {self.distinct_reference_actions} distinct reference actions", ""]
        if self.distinct_reference_actions == 1 and self.n_observations > 1:
            lines += ["**The reference chose the same action for every observation** (e.g. random "
                      "weights): agreement is not informative; see the action-logit error.", ""]
        lines += ["| dim | agreement | mean bin dist | max bin dist | mean abs err | max abs err | range |",
                  "|---|---|---|---|---|---|---|"]
        for i, name in enumerate(self.dim_names):
            lines.append(f"| {name} | {self.per_dim_agreement[i]:.1%} | {self.mean_bin_distance[i]:.2f} | "
                         f"{self.max_bin_distance[i]} | {self.mean_abs_error[i]:.4g} | "
                         f"{self.max_abs_error[i]:.4g} | {self.dim_range[i]:.4g} |")
        return "\n".join(lines) + "\n"

    def write(self, folder: str | Path, stem: str = "fidelity") -> tuple[Path, Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        json_path, md_path = folder / f"{stem}.json", folder / f"{stem}.md"
        atomic_write_json(json_path, self.to_dict())
        atomic_write_text(md_path, self.to_markdown())
        return json_path, md_path


def _valid_rows(tokens: np.ndarray, tokenizer: ActionTokenizer) -> np.ndarray:
    allowed = np.isin(tokens, tokenizer.allowed_ids)
    return allowed.all(axis=1)


def compare_tokens(reference: np.ndarray, candidate: np.ndarray, tokenizer: ActionTokenizer) -> FidelityReport:
    """Fidelity of two (n, tokens_per_action) arrays of action-token ids chosen on the same inputs."""
    ref, cand = np.asarray(reference), np.asarray(candidate)
    width = tokenizer.tokens_per_action
    if ref.shape != cand.shape or ref.ndim != 2 or ref.shape[1] != width or ref.shape[0] == 0:
        raise InputError("tokens", f"expected two equal (n, {width}) arrays, got {ref.shape} and {cand.shape}")
    ok_ref, ok_cand = _valid_rows(ref, tokenizer), _valid_rows(cand, tokenizer)
    both = ok_ref & ok_cand
    equal = (ref == cand) & both[:, None]
    names = [tokenizer.name_of(d) for d in range(width)]
    span = np.concatenate([tokenizer.action_high - tokenizer.action_low, np.ones(width - tokenizer.num_dims)])
    if both.any():
        bins_r, bins_c = tokenizer.ids_to_bins(ref[both]), tokenizer.ids_to_bins(cand[both])
        bin_dist = np.abs(bins_r - bins_c)
        err = np.abs(tokenizer.decode_bins(bins_r) - tokenizer.decode_bins(bins_c))
        mean_bin, max_bin = bin_dist.mean(axis=0), bin_dist.max(axis=0)
        mean_err, max_err = err.mean(axis=0), err.max(axis=0)
    else:  # nothing comparable: report the worst case rather than zeros that look perfect
        mean_bin = max_bin = np.full(width, tokenizer.n_bins - 1)
        mean_err = max_err = span
    return FidelityReport(
        n_observations=int(ref.shape[0]),
        dim_names=names,
        dim_range=[float(x) for x in span],
        token_agreement=float(equal.mean()),
        action_agreement=float(equal.all(axis=1).mean()),
        per_dim_agreement=[float(x) for x in equal.mean(axis=0)],
        mean_bin_distance=[float(x) for x in mean_bin],
        max_bin_distance=[int(x) for x in max_bin],
        mean_abs_error=[float(x) for x in mean_err],
        max_abs_error=[float(x) for x in max_err],
        invalid_reference=int((~ok_ref).sum()),
        invalid_candidate=int((~ok_cand).sum()),
        distinct_reference_actions=int(len({tuple(row) for row in ref[ok_ref].tolist()})),
    )


def _as_pair(obs: Any) -> Observation:
    """(image, instruction) pairs, or anything with .image and .instruction (a dataset Frame)."""
    if isinstance(obs, tuple) and len(obs) == 2:
        image, instruction = obs
    elif hasattr(obs, "image") and hasattr(obs, "instruction"):
        image, instruction = obs.image, obs.instruction
    else:
        raise InputError("observations", f"expected (image, instruction) pairs or frames, got {type(obs).__name__}")
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        raise InputError("image", f"expected one (H, W, 3) image per observation, got {getattr(image, 'shape', image)}")
    return image, instruction


def run_token_fn(fn: TokenFn, observations: Sequence[Observation], batch_size: int = 8) -> np.ndarray:
    """Token ids for every observation, batched by image size (frames of one size stack)."""
    if batch_size < 1:
        raise ConfigError("batch_size", f"must be >= 1, got {batch_size}")
    out: list[np.ndarray | None] = [None] * len(observations)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, (image, _) in enumerate(observations):
        by_shape.setdefault(image.shape, []).append(i)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            images = np.stack([observations[i][0] for i in chunk])
            tokens = np.asarray(fn(images, [observations[i][1] for i in chunk]))
            for row, i in enumerate(chunk):
                out[i] = tokens[row]
    return np.stack(out).astype(np.int64)


def as_observations(observations: Iterable[Any]) -> list[Observation]:
    """(image, instruction) pairs from pairs or frames; at least one."""
    obs = [_as_pair(o) for o in observations]
    if not obs:
        raise InputError("observations", "is empty: fidelity needs at least one observation")
    return obs


def compare_token_fns(reference: TokenFn, candidate: TokenFn, observations: Iterable[Any],
                      tokenizer: ActionTokenizer, batch_size: int = 8) -> FidelityReport:
    obs = as_observations(observations)
    return compare_tokens(run_token_fn(reference, obs, batch_size), run_token_fn(candidate, obs, batch_size),
                          tokenizer)


# ------------------------------------------------------------------------------------ logits
@dataclass(frozen=True)
class LogitFidelity:
    n_steps: int  # observations x tokens_per_action
    kl_mean: float  # nats, KL(reference || candidate) per action step
    kl_max: float
    top1_agreement: float  # argmax agreement at every step given the reference's prefix
    # Both on logits centered per step (minus their mean): a shift that softmax ignores is no error.
    max_abs_diff: float
    rel_l2: float  # ||candidate - reference|| / ||reference||
    reference_margin_mean: float  # mean top-1 minus top-2 logit of the reference

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        return (f"Action logits (teacher-forced, {self.n_steps} steps): KL mean {self.kl_mean:.3g} / max "
                f"{self.kl_max:.3g} nats, top-1 agreement {self.top1_agreement:.1%}, max |diff| "
                f"{self.max_abs_diff:.3g}, relative L2 {self.rel_l2:.3g}, reference top-1 margin "
                f"{self.reference_margin_mean:.3g}\n")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> LogitFidelity:
    """Two (..., n_bins) arrays of action logits computed on the same inputs and prefixes."""
    ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if ref.shape != cand.shape or ref.ndim < 2 or ref.size == 0:
        raise InputError("logits", f"expected two equal (..., n_bins) arrays, got {ref.shape} and {cand.shape}")
    ref2, cand2 = ref.reshape(-1, ref.shape[-1]), cand.reshape(-1, ref.shape[-1])
    log_p, log_q = _log_softmax(ref2), _log_softmax(cand2)
    ref_c = ref2 - ref2.mean(axis=-1, keepdims=True)
    cand_c = cand2 - cand2.mean(axis=-1, keepdims=True)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
    top2 = np.sort(ref2, axis=-1)[:, -2:]
    return LogitFidelity(
        n_steps=int(ref2.shape[0]), kl_mean=float(kl.mean()), kl_max=float(kl.max()),
        top1_agreement=float((ref2.argmax(-1) == cand2.argmax(-1)).mean()),
        max_abs_diff=float(np.abs(ref_c - cand_c).max()),
        rel_l2=float(np.linalg.norm(cand_c - ref_c) / max(np.linalg.norm(ref_c), 1e-30)),
        reference_margin_mean=float((top2[:, 1] - top2[:, 0]).mean()))


def run_logit_fn(fn: LogitFn, observations: Sequence[Observation], tokens: np.ndarray,
                 batch_size: int = 8) -> np.ndarray:
    """(n, tokens_per_action, n_bins) logits for every observation, teacher-forced on `tokens`."""
    out = []
    for start in range(0, len(observations), batch_size):
        chunk = observations[start:start + batch_size]
        shapes = {img.shape for img, _ in chunk}
        if len(shapes) == 1:
            out.append(np.asarray(fn(np.stack([img for img, _ in chunk]), [t for _, t in chunk],
                                     tokens[start:start + batch_size])))
        else:  # frames of different sizes do not stack: one at a time
            out.extend(np.asarray(fn(img[None], [t], tokens[start + i:start + i + 1]))
                       for i, (img, t) in enumerate(chunk))
    return np.concatenate(out, axis=0)


# ------------------------------------------------------------------------------------ adapters
def policy_token_fn(policy: Any) -> TokenFn:
    """A torch VLAPolicy (anything with `predict_action_tokens(images, instructions)`)."""
    return lambda images, instructions: policy.predict_action_tokens(images, list(instructions))


def policy_logit_fn(policy: Any) -> LogitFn:
    """A torch VLAPolicy's `action_logits` on its `build_action_token_batch` (teacher forcing);
    a bitsandbytes-quantized head runs its own forward, then the action rows are taken."""
    import torch  # the torch side only: this adapter is never used by the runtime

    def fn(images: np.ndarray, instructions: Sequence[str], tokens: np.ndarray) -> np.ndarray:
        batch = policy.build_action_token_batch(images, list(instructions), tokens)
        with torch.no_grad():
            return policy.action_logits(batch).float().cpu().numpy()
    return fn


def runtime_token_fn(policy: Any, tokens_per_action: int) -> TokenFn:
    """An `rt2edge.runtime.Policy` (anything whose `act(image, instruction)` returns an Action with
    `.tokens`): one act per frame, as on the robot; a safe fallback (no tokens) becomes -1s."""
    def fn(images: np.ndarray, instructions: Sequence[str]) -> np.ndarray:
        rows = []
        for image, instruction in zip(images, instructions):
            if hasattr(policy, "reset"):
                policy.reset()  # each observation is its own episode: no carried-over state
            action = policy.act(image, instruction)
            tokens = np.asarray(action.tokens, dtype=np.int64)
            rows.append(tokens if tokens.size else np.full(tokens_per_action, -1, np.int64))
        return np.stack(rows)
    return fn
