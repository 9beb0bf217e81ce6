"""Run a deploy artifact through the robot runtime itself, and look inside while it runs.

`ArtifactProbe` builds an `rt2edge.runtime.Policy` (its public constructor) over ONNX Runtime
sessions wrapped in taps, so every number it produces comes from the runtime's own preprocessing,
tokenization, prompt assembly and KV-cache decode loop (docs/artifact-format.md), not from a
second implementation of them:
  tokens    free-running constrained decode: (B, tokens_per_action) action-token ids;
  logits    teacher forcing: the decoder tap replaces the graph's `action_bin` by a given bin, so
            the runtime feeds that bin's embedding next; the tap keeps every step's logits;
  feeds     the exact inputs each graph received (pixel_values, the instruction ids, the prompt
            embeddings, past_length, the KV cache of every decode step): calibration data.
Any graph may be swapped for another file with the same IO (a quantized variant), which is how
the sensitivity pass measures one quantized layer at a time without writing an artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from rt2edge.artifact import GRAPH_NAMES, ArtifactManifest
from rt2edge.optional import require
from rt2edge.runtime import Policy
from rt2edge.runtime.backends import OrtGraph

CPU = "CPUExecutionProvider"


def ort_session(path: Path, threads: int | None = None):
    """A CPU session configured as the runtime's (sequential, no spinning pools)."""
    ort = require("onnxruntime", extra="cpu", purpose="running ONNX graphs")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=[CPU])


class GraphTap:
    """A GraphRunner that records feeds (when `recording`), and for the decoder can force the
    chosen bin and keep the logits."""

    def __init__(self, runner: OrtGraph):
        self.runner = runner
        self.input_names = runner.input_names
        self.recording = False
        self.feeds: list[dict[str, np.ndarray]] = []
        self.forced: list[int] | None = None  # bins to report instead of the graph's argmax
        self.logits: list[np.ndarray] = []

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        if self.recording:
            self.feeds.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        outs = self.runner.run(feeds, outputs)
        if self.forced is not None:
            names = list(outputs)
            step = len(self.logits)
            self.logits.append(np.asarray(outs[names.index("action_logits")], np.float32)[0].copy())
            outs = list(outs)
            outs[names.index("action_bin")] = np.array([self.forced[step]], dtype=np.int64)
        return outs


class ArtifactProbe:
    """The runtime Policy of `folder`, with `graph_files` replacing some of its graphs."""

    def __init__(self, folder: Path, manifest: ArtifactManifest,
                 graph_files: Mapping[str, Path] | None = None, threads: int | None = None):
        graph_files = dict(graph_files or {})
        self.taps = {g: GraphTap(OrtGraph(ort_session(graph_files.get(g, folder / manifest.graphs[g].file),
                                                      threads)))
                     for g in GRAPH_NAMES}
        # The public constructor: no warm-up call, no hash check (the caller verified the folder).
        self.policy = Policy(Path(folder), manifest, self.taps, CPU)
        self.tokenizer = self.policy.action_tokenizer

    def _act(self, image: np.ndarray, instruction: str) -> Any:
        self.policy.reset()  # each observation is its own episode
        action = self.policy.act(image, instruction)
        if action.safe_fallback:
            raise RuntimeError(f"the runtime returned the safe action: {action.reason}")
        return action

    def tokens(self, images: np.ndarray, instructions: Sequence[str]) -> np.ndarray:
        """TokenFn: (B, tokens_per_action) action-token ids, free-running."""
        return np.stack([self._act(img, text).tokens for img, text in zip(images, instructions)]).astype(np.int64)

    def logits(self, images: np.ndarray, instructions: Sequence[str], tokens: np.ndarray) -> np.ndarray:
        """LogitFn: (B, tokens_per_action, n_bins), teacher-forced on `tokens` (action-token ids)."""
        decoder = self.taps["decoder"]
        out = []
        try:
            for img, text, ids in zip(images, instructions, np.asarray(tokens)):
                decoder.forced = [int(b) for b in self.tokenizer.ids_to_bins(ids[None])[0]]
                decoder.logits = []
                self._act(img, text)
                out.append(np.stack(decoder.logits))
        finally:
            decoder.forced, decoder.logits = None, []
        return np.stack(out)

    def record_feeds(self, observations: Sequence[tuple[np.ndarray, str]]) -> dict[str, list[dict[str, np.ndarray]]]:
        """Every graph's inputs while acting on `observations` (prefill and every decode step)."""
        for tap in self.taps.values():
            tap.recording, tap.feeds = True, []
        try:
            for image, instruction in observations:
                self._act(image, instruction)
            return {g: tap.feeds for g, tap in self.taps.items()}
        finally:
            for tap in self.taps.values():
                tap.recording, tap.feeds = False, []
