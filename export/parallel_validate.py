"""Export validation of a parallel-decoding artifact: torch vs ONNX Runtime vs rt2edge.runtime.

For each observation (a uint8 image + an instruction):
  torch   ParallelVLAPolicy.predict_action_tokens (its one-pass constrained decode), the one-pass
          action logits (`action_logits` on its slot batch) and HF's image features;
  onnx    the artifact's graphs on ONNX Runtime's CPU EP: vision -> prompt embeddings -> one
          decoder run (export/reference.py's runner, without its decode loop);
  runtime rt2edge.runtime.Policy.act on the finished artifact, compared on tokens.
Every slot sees the same context in torch and ONNX, so tokens are compared slot by slot: a
mismatch counts as agreement when it is a near-tie (torch's lead of its bin over the ONNX bin is
within the graph's own logit error on that observation). Equal-length prompts are also run as one
batch. Past tolerance: ExportValidationError (its `.report` holds the full report).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from export.reference import OnnxDecodeRunner
from export.validate import (Observation, ValidationReport, _max_diff, _torch_image_embeds, batchable_groups,
                             finish_validation)
from rt2edge.artifact import ModelSpec


@dataclass
class ParallelFrameResult:
    instruction: str
    torch_bins: list[int]
    onnx_bins: list[int]
    runtime_bins: list[int] | None
    image_embeds_max_abs_diff: float
    slot_logits_max_abs_diff: list[float]  # one per action token (slot)
    logits_scale: float                    # max |torch action logit| (rtol is relative to it)
    image_embeds_scale: float
    near_tie_slots: list[int] = field(default_factory=list)  # mismatches within the logit error
    decisive_slots: list[int] = field(default_factory=list)  # mismatches beyond it

    @property
    def near_tie(self) -> bool:  # ValidationReport's per-frame flag
        return bool(self.near_tie_slots)


@dataclass
class ParallelValidationReport(ValidationReport):
    def max_abs_diff(self) -> dict[str, Any]:
        slots = np.array([f.slot_logits_max_abs_diff for f in self.frames])
        return {"image_embeds": max(f.image_embeds_max_abs_diff for f in self.frames),
                "slot_logits": [float(x) for x in slots.max(axis=0)], "logits": float(slots.max())}

    def tie_aware_agreement(self) -> float:
        compared = sum(len(f.torch_bins) for f in self.frames)
        return 1.0 - sum(len(f.decisive_slots) for f in self.frames) / compared

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["decoding"] = "parallel"
        out["near_tie_divergences"] = sum(len(f.near_tie_slots) for f in self.frames)
        return out


def _onnx_pass(runner: OnnxDecodeRunner, pixel_values: np.ndarray, prompt_ids: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """image_embeds (B, N, D), action_logits (B, S, n_bins), action_bins (B, S): one decoder run."""
    image_embeds = runner.vision(pixel_values)
    embeds = runner.prompt_embeds(np.asarray(prompt_ids, np.int64), image_embeds)
    logits, bins = runner.sessions["decoder"].run(None, {"inputs_embeds": embeds.astype(np.float32)})
    return image_embeds, logits, bins


def _torch_frame(policy, image: np.ndarray, instruction: str) -> dict[str, Any]:
    inputs = policy.encode_observations(image[None], [instruction])  # the prompt alone (B = 1: no padding)
    ids = policy.predict_action_tokens(image[None], [instruction])
    with torch.no_grad():
        logits = policy.action_logits(policy.slot_batch(image[None], [instruction]))
    return {"input_ids": inputs["input_ids"].cpu().numpy(),
            "pixel_values": inputs["pixel_values"].float().cpu().numpy(),
            "image_embeds": _torch_image_embeds(policy, inputs["pixel_values"]),
            "bins": policy.action_tokenizer.ids_to_bins(ids)[0],
            "logits": logits.float().cpu().numpy()[0]}


def _compare(frame: ParallelFrameResult, torch_logits: np.ndarray, allowed: float) -> None:
    noise = min(2.0 * max(frame.slot_logits_max_abs_diff), allowed) + 1e-7  # as export/validate.py
    for slot, (a, b) in enumerate(zip(frame.torch_bins, frame.onnx_bins)):
        if a != b:
            margin = float(torch_logits[slot, a] - torch_logits[slot, b])
            (frame.near_tie_slots if margin <= noise else frame.decisive_slots).append(slot)


def _batch_check(runner: OnnxDecodeRunner, frames: list[dict[str, Any]], onnx: list[tuple]) -> dict[str, Any]:
    batched = batchable_groups(frames)
    worst, bins_match = 0.0, True
    for group in batched:
        _, logits, bins = _onnx_pass(runner, np.concatenate([frames[i]["pixel_values"] for i in group]),
                                     np.concatenate([frames[i]["input_ids"] for i in group]))
        for row, i in enumerate(group):
            worst = max(worst, _max_diff(logits[row], frames[i]["logits"]))
            bins_match &= bool(np.array_equal(bins[row], onnx[i][2][0]))
    return {"groups": len(batched), "batch_sizes": [len(g) for g in batched],
            "max_abs_diff": worst, "bins_match_unbatched": bins_match}


def validate_parallel_artifact(policy, folder: Path, model: ModelSpec, observations: Sequence[Observation],
                               precision: str, tolerance: dict[str, float], run_runtime: bool = True
                               ) -> ParallelValidationReport:
    """Compare torch and the graphs in `folder` on `observations`; raise past `tolerance`."""
    runner = OnnxDecodeRunner(folder, num_layers=model.num_layers, num_kv_heads=model.num_kv_heads,
                              head_dim=model.head_dim, prefix_lm=model.prefix_lm,
                              image_token_id=policy.prompt.image_token_id,
                              action_token_ids=policy.action_tokenizer.token_ids)
    report = ParallelValidationReport(precision=precision, tolerance=dict(tolerance))
    frames, onnx = [], []
    for image, instruction in observations:
        ref = _torch_frame(policy, image, instruction)
        out = _onnx_pass(runner, ref["pixel_values"], ref["input_ids"])
        frames.append(ref)
        onnx.append(out)
        report.frames.append(ParallelFrameResult(
            instruction=instruction, torch_bins=[int(b) for b in ref["bins"]],
            onnx_bins=[int(b) for b in out[2][0]], runtime_bins=None,
            image_embeds_max_abs_diff=_max_diff(out[0], ref["image_embeds"]),
            slot_logits_max_abs_diff=[_max_diff(out[1][0, s], ref["logits"][s]) for s in range(len(ref["bins"]))],
            logits_scale=float(np.abs(ref["logits"]).max()),
            image_embeds_scale=float(np.abs(ref["image_embeds"]).max())))
    allowed = report.allowed()["logits"]
    for frame, ref in zip(report.frames, frames):
        _compare(frame, ref["logits"], allowed)
    report.batch = _batch_check(runner, frames, onnx)
    return finish_validation(report, folder, observations, run_runtime, _judge)


def _judge(report: ParallelValidationReport) -> None:
    allowed, diffs = report.allowed(), report.max_abs_diff()
    if not diffs["image_embeds"] <= allowed["image_embeds"]:
        report.failures.append(f"image_embeds max abs diff {diffs['image_embeds']:.3g} > {allowed['image_embeds']:.3g}")
    if not diffs["logits"] <= allowed["logits"]:
        report.failures.append(f"action logits max abs diff {diffs['logits']:.3g} > {allowed['logits']:.3g} "
                               f"(per slot: {[f'{d:.3g}' for d in diffs['slot_logits']]})")
    agreement, min_agree = report.tie_aware_agreement(), report.tolerance["min_token_agreement"]
    if agreement < min_agree:
        decisive = [(i, f.decisive_slots) for i, f in enumerate(report.frames) if f.decisive_slots]
        report.failures.append(f"action-token agreement with torch {agreement:.3f} < {min_agree:g}: "
                               f"{len(decisive)} observations differ beyond a near-tie (first: #{decisive[0][0]}, "
                               f"slots {decisive[0][1]})")
