"""Export validates itself: torch and ONNX Runtime on the same observations, compared.

For each observation (a uint8 image + an instruction):
  torch   the VLAPolicy's own constrained decode (`predict_action_tokens`: HF generate with the
          action-only logits processor), HF's image features, and the teacher-forced action
          logits of every step at torch's own tokens (`VLAPolicy.action_logits`);
  onnx    the artifact's graphs on ONNX Runtime's CPU EP running the contract's decode loop
          (export/reference.py): free-running for token agreement, and teacher-forced with
          torch's bins so every step's logits are compared on the same context;
  runtime rt2edge.runtime.Policy.act on the finished artifact (tokenizer.json, preprocessing,
          manifest and all): the robot's own path, compared on tokens.
Observations with equal prompt lengths are also decoded as one batch, to check that the dynamic
batch dim gives the per-observation results.

Per-output max abs diffs (image_embeds, prefill logits, each decode step's logits) and token
agreements go to export_report.json; past tolerance, ExportValidationError (its `.report` holds
the full report).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from export.reference import OnnxDecodeRunner
from rt2edge.artifact import ModelSpec
from rt2edge.errors import ExportValidationError, InputError

log = logging.getLogger("rt2edge.export")

Observation = tuple[np.ndarray, str]

# Tabletop instructions of RT-2's kind, for random validation observations.
VALIDATION_INSTRUCTIONS = (
    "pick up the red block", "put the blue cube in the green bowl", "open the drawer",
    "push the yellow ball to the left", "move the green cup near the red block", "close the gripper",
)


def random_observations(n: int, size: int, seed: int) -> list[Observation]:
    """n random RGB frames; consecutive pairs share an instruction so the batch check has work."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
             VALIDATION_INSTRUCTIONS[(i // 2) % len(VALIDATION_INSTRUCTIONS)]) for i in range(n)]


def check_observations(observations: Iterable[Observation]) -> list[Observation]:
    out = []
    for i, item in enumerate(observations):
        if not (isinstance(item, tuple) and len(item) == 2):
            raise InputError("observations", f"item {i} must be an (image, instruction) pair")
        image, instruction = item
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
            raise InputError("observations", f"item {i}: image must be an (H, W, 3) uint8 array")
        if not isinstance(instruction, str):
            raise InputError("observations", f"item {i}: instruction must be a str")
        out.append((image, instruction))
    if not out:
        raise InputError("observations", "is empty: validation needs at least one observation")
    return out


@dataclass
class FrameResult:
    instruction: str
    torch_bins: list[int]
    onnx_bins: list[int]
    runtime_bins: list[int] | None
    image_embeds_max_abs_diff: float
    step_logits_max_abs_diff: list[float]  # [0] is the prefill
    logits_scale: float                    # max |torch action logit| (rtol is relative to it)
    image_embeds_scale: float              # max |torch image embedding|
    first_divergence: int | None = None    # first step where ONNX picked another bin than torch
    divergence_margin: float | None = None  # torch's logit lead of its bin over ONNX's there
    near_tie: bool | None = None           # that lead is within the graph's own numeric error


@dataclass
class ValidationReport:
    precision: str
    tolerance: dict[str, float]
    frames: list[FrameResult] = field(default_factory=list)
    batch: dict[str, Any] = field(default_factory=dict)
    runtime: str = "not run"
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def max_abs_diff(self) -> dict[str, Any]:
        steps = np.array([f.step_logits_max_abs_diff for f in self.frames])
        return {"image_embeds": max(f.image_embeds_max_abs_diff for f in self.frames),
                "prefill_logits": float(steps[:, 0].max()),
                "step_logits": [float(x) for x in steps.max(axis=0)],
                "logits": float(steps.max())}

    def scale(self) -> dict[str, float]:
        return {"image_embeds": max(f.image_embeds_scale for f in self.frames),
                "logits": max(f.logits_scale for f in self.frames)}

    def allowed(self) -> dict[str, float]:
        """The max abs diff allowed per output: atol + rtol * scale."""
        tol = self.tolerance
        return {k: tol["atol"] + tol["rtol"] * v for k, v in self.scale().items()}

    def agreement(self, which: str) -> float | None:
        pairs = [(f.torch_bins, getattr(f, f"{which}_bins")) for f in self.frames]
        if any(other is None for _, other in pairs):
            return None
        same = [a == b for t, o in pairs for a, b in zip(t, o)]
        return float(np.mean(same))

    def tie_aware_agreement(self) -> float:
        """The gated agreement. Tokens are compared while ONNX and torch decode the same context,
        i.e. up to the first divergence; a divergence at a near-tie counts as agreement (either
        bin is right within the arithmetic's error), and later tokens, conditioned on different
        contexts, are not compared. 1.0 = no decisive disagreement anywhere."""
        agree = compared = 0
        for f in self.frames:
            if f.first_divergence is None:
                agree += len(f.torch_bins)
                compared += len(f.torch_bins)
            else:
                agree += f.first_divergence + bool(f.near_tie)
                compared += f.first_divergence + 1
        return agree / compared

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "failures": list(self.failures), "precision": self.precision,
                "tolerance": dict(self.tolerance), "allowed_max_abs_diff": self.allowed(),
                "num_frames": len(self.frames),
                "max_abs_diff": self.max_abs_diff(),
                "scale": self.scale(),
                "near_tie_divergences": sum(bool(f.near_tie) for f in self.frames),
                "token_agreement": {"onnx_reference": self.agreement("onnx"),
                                    "runtime": self.agreement("runtime"),
                                    "tie_aware": self.tie_aware_agreement()},
                "runtime": self.runtime, "batch": dict(self.batch),
                "frames": [asdict(f) for f in self.frames]}


def _torch_image_embeds(policy, pixel_values: torch.Tensor) -> np.ndarray:
    """HF's own image features (not the export wrapper's), so the wrapper is checked too."""
    with torch.no_grad():
        out = policy.model.model.get_image_features(pixel_values=pixel_values).pooler_output
    out = torch.stack(list(out)) if isinstance(out, (list, tuple)) else out
    return out.float().cpu().numpy()


def _torch_frame(policy, image: np.ndarray, instruction: str) -> dict[str, Any]:
    tokenizer = policy.action_tokenizer
    inputs = policy.encode_observations(image[None], [instruction])
    ids = policy.predict_action_tokens(image[None], [instruction])
    with torch.no_grad():
        logits = policy.action_logits(policy.build_action_token_batch(image[None], [instruction], ids))
    return {"input_ids": inputs["input_ids"].cpu().numpy(),
            "pixel_values": inputs["pixel_values"].float().cpu().numpy(),
            "image_embeds": _torch_image_embeds(policy, inputs["pixel_values"]),
            "bins": tokenizer.ids_to_bins(ids)[0],
            "logits": logits.float().cpu().numpy()[0]}


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(np.nan_to_num(diff, nan=np.inf).max())


def _runtime_bins(folder: Path, observations: Sequence[Observation]) -> tuple[list[list[int]] | None, str]:
    """Bins from the robot runtime on the finished artifact (manifest already written)."""
    from rt2edge.runtime import Policy

    runtime = Policy.load(folder, providers=["CPUExecutionProvider"], warmup=0)
    bins = []
    for image, instruction in observations:
        action = runtime.act(image, instruction)
        if action.safe_fallback:
            return None, f"runtime returned the safe action: {action.reason}"
        bins.append([int(b) for b in action.bins])
    return bins, f"ok ({runtime.provider})"


def batchable_groups(frames: Sequence[dict[str, Any]]) -> list[list[int]]:
    """Indices of frames whose prompts have the same length, 2 or more per group: each group
    runs as one unpadded batch, checked against the same frames run alone."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, frame in enumerate(frames):
        groups[frame["input_ids"].shape[1]].append(i)
    return [g for g in groups.values() if len(g) > 1]


def _batch_check(runner: OnnxDecodeRunner, torch_frames: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    batched = batchable_groups(torch_frames)
    worst, bins_match = 0.0, True
    for group in batched:
        ids = np.concatenate([torch_frames[i]["input_ids"] for i in group])
        pixels = np.concatenate([torch_frames[i]["pixel_values"] for i in group])
        forced = np.stack([torch_frames[i]["bins"] for i in group])
        trace = runner.decode(pixels, ids, steps, forced_bins=forced)
        free = runner.decode(pixels, ids, steps)
        for row, i in enumerate(group):
            logits = np.stack([step[row] for step in trace.step_logits])
            worst = max(worst, _max_diff(logits, torch_frames[i]["logits"]))
            single = runner.decode(torch_frames[i]["pixel_values"], torch_frames[i]["input_ids"], steps)
            bins_match &= bool(np.array_equal(free.bins[row], single.bins[0]))
    return {"groups": len(batched), "batch_sizes": [len(g) for g in batched],
            "max_abs_diff": worst, "bins_match_unbatched": bins_match}


def validate_artifact(policy, folder: Path, model: ModelSpec, observations: Sequence[Observation],
                      precision: str, tolerance: dict[str, float], run_runtime: bool = True
                      ) -> ValidationReport:
    """Compare torch and the graphs in `folder` on `observations`; raise past `tolerance`."""
    tokenizer = policy.action_tokenizer
    steps = tokenizer.tokens_per_action
    runner = OnnxDecodeRunner(folder, num_layers=model.num_layers, num_kv_heads=model.num_kv_heads,
                              head_dim=model.head_dim, prefix_lm=model.prefix_lm,
                              image_token_id=policy.prompt.image_token_id,
                              action_token_ids=tokenizer.token_ids)
    report = ValidationReport(precision=precision, tolerance=dict(tolerance))
    torch_frames, torch_logits = [], []
    for image, instruction in observations:
        ref = _torch_frame(policy, image, instruction)
        torch_frames.append(ref)
        free = runner.decode(ref["pixel_values"], ref["input_ids"], steps)
        forced = runner.decode(ref["pixel_values"], ref["input_ids"], steps, forced_bins=ref["bins"][None])
        report.frames.append(FrameResult(
            instruction=instruction,
            torch_bins=[int(b) for b in ref["bins"]],
            onnx_bins=[int(b) for b in free.bins[0]],
            runtime_bins=None,
            image_embeds_max_abs_diff=_max_diff(free.image_embeds, ref["image_embeds"]),
            step_logits_max_abs_diff=[_max_diff(forced.step_logits[s][0], ref["logits"][s])
                                      for s in range(steps)],
            logits_scale=float(np.abs(ref["logits"]).max()),
            image_embeds_scale=float(np.abs(ref["image_embeds"]).max())))
        torch_logits.append(ref["logits"])
    allowed = report.allowed()["logits"]
    for frame, logits in zip(report.frames, torch_logits):
        _divergence(frame, logits, allowed)
    report.batch = _batch_check(runner, torch_frames, steps)
    return finish_validation(report, folder, observations, run_runtime, _judge)


def finish_validation(report, folder: Path, observations: Sequence[Observation], run_runtime: bool,
                      judge) -> Any:
    """The tail every validator shares: the runtime's bins per frame, the verdict (`judge` fills
    report.failures with the graph-vs-torch checks, then the runtime and batch checks every
    decoding shares), and a typed error carrying the report when it failed."""
    if run_runtime:
        bins, report.runtime = _runtime_bins(folder, observations)
        for frame, b in zip(report.frames, bins or []):
            frame.runtime_bins = b
    judge(report)
    if report.runtime.startswith("runtime returned"):
        report.failures.append(report.runtime)
    # Same graphs, same execution provider: the robot runtime must pick exactly the reference's
    # bins. A difference means its tokenization, preprocessing or decode loop left the contract.
    off = [f for f in report.frames if f.runtime_bins is not None and f.runtime_bins != f.onnx_bins]
    if off:
        report.failures.append(f"rt2edge.runtime picks other bins than the reference ONNX pass on {len(off)} "
                               f"observations (first: {off[0].instruction!r}: {off[0].runtime_bins} vs "
                               f"{off[0].onnx_bins})")
    if report.batch.get("groups") and not (report.batch["max_abs_diff"] <= report.allowed()["logits"]
                                           and report.batch["bins_match_unbatched"]):
        report.failures.append(f"batched run differs from per-observation runs: {report.batch}")
    if not report.passed:
        error = ExportValidationError("export validation failed:\n  " + "\n  ".join(report.failures))
        error.report = report
        raise error
    return report


def _divergence(frame: FrameResult, torch_logits: np.ndarray, allowed: float) -> None:
    """Where ONNX first chose another bin, and whether that was a near-tie: torch's logit lead of
    its own bin over ONNX's is within twice the largest logit error this graph showed on the
    observation (capped by the allowed error, so a bad graph cannot excuse itself). Up to that
    step both decoded the same context, so the torch logits there are the right yardstick; after
    it the contexts differ and later mismatches say nothing more."""
    for step, (a, b) in enumerate(zip(frame.torch_bins, frame.onnx_bins)):
        if a != b:
            margin = float(torch_logits[step, a] - torch_logits[step, b])
            noise = min(2.0 * max(frame.step_logits_max_abs_diff), allowed) + 1e-7
            frame.first_divergence, frame.divergence_margin = step, margin
            frame.near_tie = bool(margin <= noise)
            return


def _judge(report: ValidationReport) -> None:
    min_agree = report.tolerance["min_token_agreement"]
    allowed = report.allowed()
    diffs = report.max_abs_diff()
    if not diffs["image_embeds"] <= allowed["image_embeds"]:
        report.failures.append(f"image_embeds max abs diff {diffs['image_embeds']:.3g} > {allowed['image_embeds']:.3g}")
    for step, d in enumerate(diffs["step_logits"]):
        if not d <= allowed["logits"]:
            what = "prefill" if step == 0 else f"decode step {step}"
            report.failures.append(f"{what} action logits max abs diff {d:.3g} > {allowed['logits']:.3g}")
    agreement = report.tie_aware_agreement()
    if agreement < min_agree:
        decisive = [i for i, f in enumerate(report.frames) if f.near_tie is False]
        f = report.frames[decisive[0]]
        report.failures.append(
            f"action-token agreement with torch {agreement:.3f} < {min_agree:g}: {len(decisive)} observations "
            f"diverge by more than a near-tie (first: #{decisive[0]} at step {f.first_divergence}, torch's "
            f"lead {f.divergence_margin:.3g} over the ONNX bin exceeds the logit error)")
