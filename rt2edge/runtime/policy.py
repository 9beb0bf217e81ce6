"""`Policy`: load a deploy artifact and turn (image, instruction) into an `Action` (numpy + ORT only).

    policy = Policy.load("artifacts/my-policy", deadline_s=0.1)
    action = policy.act(rgb_uint8_hwc, "pick up the red block")

Safety contract of `act` (a control loop must never crash and never wait for a late action):
  * malformed inputs raise `InputError` naming the field (image, instruction): caller bugs;
  * every returned action lies within the action tokenizer's bounds;
  * a predicted or actual deadline miss, or any failure of the inference itself, returns the safe
    action (`ActionGuard`) with `safe_fallback=True` and the `reason`, and logs it.

Decoding is greedy (the argmax bin of every action token), except with `loop_escape`: the motion
and gripper tokens of an action taken from a state the episode already acted from are sampled
instead (loop_escape.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rt2edge.artifact import ArtifactManifest, cache_names, load_manifest
from rt2edge.errors import ConfigError, InputError
from rt2edge.observation import validate_images, validate_instruction
from rt2edge.runtime import engine as _engine  # noqa: F401  (registers the tensorrt-engine backend)
from rt2edge.runtime.action import Action, ActionGuard
from rt2edge.runtime.backends import BackendOptions, open_graphs
from rt2edge.runtime.latency import Deadline, DeadlineExceeded, LatencyEstimator, SkipPolicy
from rt2edge.runtime.loop_escape import LoopEscape, LoopMonitor, translation_indices
from rt2edge.runtime.prefix_cache import (PrefixKVCache, check_prefix_cache_size, outputs_match,
                                          prefix_cache_refusal)
from rt2edge.runtime.prompt_text import PromptText, check_text_cache_size

log = logging.getLogger("rt2edge.runtime")

DECODE_STEP = "decode_step"  # latency-estimator key of one decoder run after the prefill
PREFILL_CACHED = "prefill_cached"  # latency-estimator key of a prefill from cached text KV
WARM_UP_TEXT = "warm up"  # the instruction of warm-up and load-time checks (never kept cached)


class Policy:
    """A loaded artifact. Build it with `Policy.load`; not thread-safe (one control loop each)."""

    def __init__(self, folder: Path, manifest: ArtifactManifest, runners: dict, provider: str,
                 deadline_s: float | None = None, safe_gripper: float | None = None,
                 text_cache_size: int = 16, unnorm_key: str | None = None, prefix_cache_size: int = 0,
                 loop_escape: LoopEscape | None = None):
        self.folder = folder
        self.manifest = manifest
        self.provider = provider
        self.deadline_s = deadline_s
        self.action_tokenizer = manifest.action_tokenizer(unnorm_key)
        self.prompt = manifest.prompt_format()
        self.preprocessing = manifest.image_preprocessing()
        self.guard = ActionGuard(self.action_tokenizer, safe_gripper)
        self.loop = None if loop_escape is None else LoopMonitor(_loop_escape(loop_escape), self.action_tokenizer)
        self._sampling = False  # this act's tokens are drawn by self.loop, not taken greedily
        self.latency = LatencyEstimator()
        self._skip = SkipPolicy()
        self._vision, self._embed, self._decoder = (runners[g] for g in ("vision", "embed", "decoder"))
        self._text = PromptText(folder / manifest.files["tokenizer"].file, self.prompt, self._embed, text_cache_size)

        model = manifest.model
        # [Contract] a parallel artifact's decoder gives every action token in one run, from the
        # prompt alone: no KV cache, no fed-back token, no decode steps (docs/artifact-format.md).
        self._parallel = manifest.decoding == "parallel"
        self._past_names = cache_names(model.num_layers, "past")
        self._outputs = (["action_logits", "action_bins"] if self._parallel else
                         ["action_logits", "action_bin"] + cache_names(model.num_layers, "present"))
        empty = np.zeros((1, model.num_kv_heads, 0, model.head_dim), np.float32)
        self._empty_past = {n: empty for n in self._past_names}
        self._n_decode = 0 if self._parallel else self.action_tokenizer.tokens_per_action - 1
        # Text KV per instruction (prefix_cache.py); on only once `verify_prefix_cache` has checked
        # it on these graphs, which `load` does.
        check_prefix_cache_size(prefix_cache_size)
        self._prefix = PrefixKVCache(0)
        self._prefix_refusal = prefix_cache_refusal(self.prompt.instruction_first, model.prefix_lm,
                                                    self._parallel, manifest.precision)
        if not self._parallel:
            # [Contract] the decode-step input of bin b is embed(token_ids[b]): computed once here.
            ids = self.action_tokenizer.token_ids[None].astype(np.int64)
            table = self._embed.run({"input_ids": ids}, ["inputs_embeds"])[0][0]
            self._bin_embeds = np.ascontiguousarray(table.astype(np.float32)[:, None, None, :])

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, artifact_dir: str | Path, providers: Sequence[str] | str | None = None,
             num_threads: int | None = None, deadline_s: float | None = None, *,
             safe_gripper: float | None = None, warmup: int = 1, cache_dir: str | None = None,
             text_cache_size: int = 16, unnorm_key: str | None = None, prefix_cache_size: int = 2,
             loop_escape: LoopEscape | None = None) -> Policy:
        """Verify the artifact (manifest, sizes, sha256 of every file) and only then open it.

        providers: backend names, best first ("tensorrt-engine", "TensorrtExecutionProvider",
            "CUDAExecutionProvider", "CPUExecutionProvider" or cpu/cuda/tensorrt/engine); default:
            the best available. The CPU is always the last fallback; `policy.provider` says what runs.
        num_threads: intra-op threads per graph (default: ONNX Runtime's, one per physical core).
        deadline_s: per-`act` latency budget; None disables the deadline.
        safe_gripper: gripper value of the safe action before any action was commanded.
        unnorm_key: the dataset whose statistics turn bins into real units (OpenVLA's unnorm_key);
            default: the one the artifact was exported with.
        warmup: `act` calls on a blank image at load, so the first real call is not the slowest
            and the deadline has a latency estimate from the start.
        prefix_cache_size: instructions whose text keys/values are kept (instruction-first prompts
            on causal decoders: later frames prefill only the image and what follows); 0 disables.
            Each entry holds layers x 2 x kv_heads x text tokens x head_dim floats.
        loop_escape: sample the action taken from a state this episode already acted from, instead
            of repeating a loop (`LoopEscape`, loop_escape.py); None: always greedy. Needs x, y, z
            end-effector delta dims; `reset()` at the start of every episode.
        """
        if deadline_s is not None and not deadline_s > 0:
            raise ConfigError("deadline_s", f"must be > 0 seconds or None, got {deadline_s!r}")
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise ConfigError("num_threads", f"must be an int >= 1 or None, got {num_threads!r}")
        check_prefix_cache_size(prefix_cache_size)
        check_text_cache_size(text_cache_size)
        folder = Path(artifact_dir)
        manifest = load_manifest(folder, verify=True)  # before any session reads a byte
        tokenizer = manifest.action_tokenizer(unnorm_key)  # an unknown dataset is refused before any session
        if loop_escape is not None:  # and an action space loop escape cannot track
            _loop_escape(loop_escape)
            translation_indices(tokenizer)
        runners, provider = open_graphs(folder, manifest, providers,
                                        BackendOptions(num_threads=num_threads, cache_dir=cache_dir))
        policy = cls(folder, manifest, runners, provider, deadline_s, safe_gripper, text_cache_size, unnorm_key,
                     loop_escape=loop_escape)
        policy.verify_prefix_cache(prefix_cache_size)
        if policy.guard.zero_outside_bounds:
            log.warning("rt2edge runtime: dims %s cannot be 0 within their bounds; the safe action "
                        "clips them to the nearest bound", policy.guard.zero_outside_bounds)
        policy.warm_up(warmup)
        log.info("rt2edge runtime: loaded %s on %s", folder, provider)
        return policy

    def warm_up(self, runs: int = 1) -> None:
        size = self.preprocessing.size
        blank = np.full((size, size, 3), 127, np.uint8)
        deadline, self.deadline_s = self.deadline_s, None
        loop, self.loop = self.loop, None  # blank frames are not an episode
        try:
            for _ in range(runs):
                self.latency.reset()  # keep only the last (warm) run's samples
                self._prefix.pop(WARM_UP_TEXT)  # each a whole prefill: a new instruction's estimate
                self._warm_act(blank)
            if runs and self._prefix.size:  # and one from the cached text KV: the estimate of the rest
                self._warm_act(blank)
        finally:
            self.deadline_s = deadline
            self.loop = loop
            self.reset()
            self._text.pop(WARM_UP_TEXT)
            self._prefix.pop(WARM_UP_TEXT)

    def _warm_act(self, image: np.ndarray) -> None:
        action = self.act(image, WARM_UP_TEXT)
        if action.safe_fallback:
            log.warning("rt2edge runtime: warm-up failed: %s", action.reason)

    @property
    def prefix_cache_size(self) -> int:
        """Instructions whose text keys/values are cached; 0 when off (or refused at load)."""
        return self._prefix.size

    def verify_prefix_cache(self, size: int) -> None:
        """Turn the prefix cache on for `size` instructions if this artifact allows it
        (prefix_cache.prefix_cache_refusal) and these graphs agree: a blank frame's prompt is
        prefilled whole, then from the cached text KV, and both must give the same outputs. A
        backend whose attention mishandles a prefill after a past (T > 1 with P > 0) then costs
        speed, not actions. Logged either way."""
        self._prefix.turn_off()
        if not check_prefix_cache_size(size):
            return
        if self._prefix_refusal is not None:
            log.info("rt2edge runtime: prefix cache off (%s)", self._prefix_refusal)
            return
        side = self.preprocessing.size
        self._prefix = PrefixKVCache(size)
        try:
            pixel_values = self.preprocessing(np.full((1, side, side, 3), 127, np.uint8))
            image = self._vision.run({"pixel_values": pixel_values}, ["image_embeds"])[0].astype(np.float32)
            before, after = self._text.embeds(WARM_UP_TEXT)
            prefix = np.zeros(1, np.int64)
            whole = self._prefill(WARM_UP_TEXT, before, image, after, prefix)
            cached = self._prefill(WARM_UP_TEXT, before, image, after, prefix)
            if not self._prefix.size:  # the cached prefill raised: _prefill logged it, turned it off
                why = "the prefill from the cached text failed"
            else:
                why = None if outputs_match(whole, cached) else "outputs differ from the whole prefill"
        except Exception as exc:  # noqa: BLE001  (any failure here only turns the cache off)
            why = f"{type(exc).__name__}: {exc}"
        finally:
            self._text.pop(WARM_UP_TEXT)
            self._prefix.pop(WARM_UP_TEXT)
        if why is not None:
            log.warning("rt2edge runtime: prefix cache off (%s on %s)", why, self.provider)
            self._prefix.turn_off()
        else:
            log.info("rt2edge runtime: prefix cache on (%d instructions)", size)

    def reset(self, gripper: float | None = None, seed: int | None = None) -> None:
        """Start of an episode: forget the last commanded gripper value (or set the current one)
        and, with loop escape, the poses acted from; `seed` reseeds its sampling for this episode."""
        self.guard.reset(gripper)
        if self.loop is not None:
            self.loop.reset(gripper, seed)

    # ----------------------------------------------------------------------------- acting
    def act(self, image: Any, instruction: Any) -> Action:
        """One action for one RGB image ((H, W, 3) uint8, or float in [0, 1]) and an instruction."""
        start = time.perf_counter()
        timing: dict[str, float] = {}
        try:
            text = validate_instruction(instruction)
            if text not in self._text:  # refused now, whether or not this act is then skipped
                self._text.input_ids(text)
            batch = self._validate_image(image)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001  (e.g. MemoryError converting a huge float image)
            timing["total"] = time.perf_counter() - start
            return self._fallback(f"input handling failed: {type(exc).__name__}: {exc}", timing)
        predicted = (0.0 if self.deadline_s is None else
                     self.latency.predict_sum(self._stages(cached=self._prefix_hit(text))))
        skip, probe = self._skip.decide(self.deadline_s, predicted)
        if skip:
            timing["total"] = time.perf_counter() - start
            return self._fallback(f"deadline {self.deadline_s * 1e3:.2f} ms: predicted latency "
                                  f"{predicted * 1e3:.2f} ms, not started", timing)
        deadline = Deadline(self.deadline_s, self.latency, start, probe)
        self._sampling = self._returning()
        try:
            action = self._infer(batch, text, deadline, timing, start)
        except InputError:
            raise
        except DeadlineExceeded as exc:
            timing["total"] = time.perf_counter() - start
            return self._fallback(str(exc), timing)
        except Exception as exc:  # noqa: BLE001  (the documented contract: never crash the loop)
            log.exception("rt2edge runtime: inference failed, returning the safe action")
            timing["total"] = time.perf_counter() - start
            return self._fallback(f"inference failed: {type(exc).__name__}: {exc}", timing)
        # The checks run between stages: a slow last stage is only seen here. Late is a miss.
        if self.deadline_s is not None and action.timing["total"] > self.deadline_s:
            return self._fallback(f"deadline {self.deadline_s * 1e3:.2f} ms: the action took "
                                  f"{action.timing['total'] * 1e3:.2f} ms", dict(action.timing))
        self.guard.commit(action.values)
        if self.loop is not None:  # only actions handed to the robot move the commanded pose
            try:
                self.loop.record(action.values)
                self.loop.escapes += self._sampling
            except Exception:  # noqa: BLE001  (bookkeeping must not cost the robot its action)
                log.exception("rt2edge runtime: loop escape bookkeeping failed; loop escape off")
                self.loop = None
        return action

    def _returning(self) -> bool:
        """Whether this act starts from a state the episode acted from (loop escape on)."""
        if self.loop is None:
            return False
        try:
            return self.loop.returning()
        except Exception:  # noqa: BLE001  (greedy is always a safe answer)
            log.exception("rt2edge runtime: loop escape check failed; loop escape off")
            self.loop = None
            return False

    def _stages(self, after: str | None = None, decode_done: int = 0, cached: bool = False) -> list[str]:
        """The latency-estimator keys of what is left of an act. A prefill from cached text KV runs
        a shorter prompt: its own key, predicted as a whole prefill until it has samples."""
        prefill = PREFILL_CACHED if cached and self.latency.has(PREFILL_CACHED) else "prefill"
        order = ["preprocess", "embed", "vision", prefill]
        stages = order[order.index(after) + 1:] if after else order
        return stages + [DECODE_STEP] * (self._n_decode - decode_done) + ["postprocess"]

    def _prefix_hit(self, text: str) -> bool:
        return text in self._prefix

    def _timed(self, stage: str, timing: dict[str, float], t: float, key: str | None = None) -> float:
        now = time.perf_counter()
        timing[stage] = now - t
        self.latency.record(key or stage, now - t)
        return now

    def _infer(self, batch: np.ndarray, text: str, deadline: Deadline, timing: dict[str, float],
               start: float) -> Action:
        t = start
        pixel_values = self.preprocessing(batch)
        t = self._timed("preprocess", timing, t)
        before, after = self._text.embeds(text)  # InputError when the prompt has too many tokens
        t = self._timed("embed", timing, t)
        cached = self._prefix_hit(text)
        deadline.check("before vision", self._stages("embed", cached=cached))
        image_embeds = self._vision.run({"pixel_values": pixel_values}, ["image_embeds"])[0]
        t = self._timed("vision", timing, t)
        deadline.check("before prefill", self._stages("vision", cached=cached))

        image_embeds = image_embeds.astype(np.float32, copy=False)
        length = before.shape[1] + image_embeds.shape[1] + after.shape[1]
        if self._parallel:  # the whole action from one decoder run, timed as the prefill
            prompt_embeds = np.concatenate([before, image_embeds, after], axis=1)
            bins = self._pick_all(self._decoder.run({"inputs_embeds": prompt_embeds}, self._outputs))
            t = self._timed("prefill", timing, t)
            timing["decode"] = 0.0
            return self._finish(bins, timing, t, start, [])
        # [Contract] prefix_length: the whole prompt attends bidirectionally for prefix-LM families
        # (PaliGemma), 0 for causal ones; the same value on every decoder run of one action.
        prefix = np.array([length if self.manifest.model.prefix_lm else 0], np.int64)
        outs = self._prefill(text, before, image_embeds, after, prefix)
        bins = [self._pick(outs, 0)]
        t = self._timed("prefill", timing, t, PREFILL_CACHED if cached and self._prefix_hit(text) else None)

        steps: list[float] = []
        for step in range(1, self._n_decode + 1):
            deadline.check(f"before decode step {step}", self._stages("prefill", step - 1))
            feeds = dict(zip(self._past_names, outs[2:]))
            feeds.update(inputs_embeds=self._bin_embeds[bins[-1]], prefix_length=prefix,
                         past_length=np.array([length + step - 1], np.int64))
            outs = self._decoder.run(feeds, self._outputs)
            bins.append(self._pick(outs, step))
            now = time.perf_counter()
            steps.append(now - t)
            self.latency.record(DECODE_STEP, now - t)
            t = now
        timing["decode"] = float(sum(steps))
        return self._finish(bins, timing, t, start, steps)

    def _prefill(self, text: str, before: np.ndarray, image_embeds: np.ndarray, after: np.ndarray,
                 prefix: np.ndarray) -> list[np.ndarray]:
        """The decoder run on the prompt: on the image and what follows it when the text before it
        has cached keys/values, else on the whole prompt (caching the text's part of its KV)."""
        cached = self._prefix.get(text)
        if cached is not None:
            try:
                return self._decoder.run({"inputs_embeds": np.concatenate([image_embeds, after], axis=1),
                                          "past_length": np.array([before.shape[1]], np.int64),
                                          "prefix_length": prefix, **dict(zip(self._past_names, cached))},
                                         self._outputs)
            except Exception:  # noqa: BLE001  (a shape the load-time check did not try: lose speed, not the act)
                log.exception("rt2edge runtime: prefill from the cached text failed; prefix cache off")
                self._prefix.turn_off()
        outs = self._decoder.run({"inputs_embeds": np.concatenate([before, image_embeds, after], axis=1),
                                  "past_length": np.zeros(1, np.int64), "prefix_length": prefix,
                                  **self._empty_past}, self._outputs)
        self._prefix.put(text, outs[2:], before.shape[1])  # the present KV's first positions: the text's
        return outs

    def _finish(self, bins: Sequence[int] | np.ndarray, timing: dict[str, float], t: float, start: float,
                steps: list[float]) -> Action:
        bins_arr = np.asarray(bins, np.int64)
        values = self.guard.clip(self.action_tokenizer.decode_bins(bins_arr))
        terminate = bool(self.action_tokenizer.terminate and values[-1] >= 0.5)
        t = self._timed("postprocess", timing, t)
        timing["total"] = t - start
        return Action(values=values, terminate=terminate, bins=bins_arr,
                      tokens=self.action_tokenizer.token_ids[bins_arr], timing=timing,
                      decode_steps=tuple(steps), loop_escape=self._sampling)

    def _pick(self, outs: list[np.ndarray], token: int) -> int:
        """The bin of action token `token` (the graph's argmax, or drawn by loop escape)."""
        logits, chosen = outs[0], outs[1]
        # A NaN/inf logit means a broken graph or numerics (fp16 overflow): never act on it.
        if not np.isfinite(logits).all():
            raise FloatingPointError("decoder produced non-finite action logits")
        if self._sampling and token < self.loop.sampled_tokens:  # the next decode step is fed this bin
            chosen = self.loop.sample(np.asarray(logits).reshape(-1, self.action_tokenizer.n_bins)[:1])
        b = int(np.asarray(chosen).reshape(-1)[0])
        if not 0 <= b < self.action_tokenizer.n_bins:
            raise IndexError(f"decoder chose bin {b}, outside [0, {self.action_tokenizer.n_bins})")
        return b

    def _pick_all(self, outs: list[np.ndarray]) -> np.ndarray:
        """The checks of `_pick` on a parallel decoder's (1, S, n_bins) logits and (1, S) bins."""
        logits, chosen = outs[0], np.asarray(outs[1]).reshape(-1)
        if not np.isfinite(logits).all():
            raise FloatingPointError("decoder produced non-finite action logits")
        if self._sampling:
            n = self.loop.sampled_tokens
            chosen = chosen.copy()
            chosen[:n] = self.loop.sample(np.asarray(logits).reshape(-1, self.action_tokenizer.n_bins)[:n])
        n_bins, steps = self.action_tokenizer.n_bins, self.action_tokenizer.tokens_per_action
        if chosen.shape != (steps,) or chosen.min() < 0 or chosen.max() >= n_bins:
            raise IndexError(f"decoder chose bins {chosen.tolist()}, expected {steps} in [0, {n_bins})")
        return chosen.astype(np.int64)

    def _fallback(self, reason: str, timing: dict[str, float]) -> Action:
        log.warning("rt2edge runtime: safe action (%s)", reason)
        return self.guard.safe_action(reason, timing)

    # ----------------------------------------------------------------------------- inputs
    def _validate_image(self, image: Any) -> np.ndarray:
        if isinstance(image, np.ndarray) and image.dtype.kind == "f":
            # Check the shape on a zero-memory stand-in before touching a possibly huge array.
            validate_images(np.broadcast_to(np.uint8(0), image.shape))
            if not np.isfinite(image).all():
                raise InputError("image", "contains NaN or infinite values")
            if image.min() < 0.0 or image.max() > 1.0:
                raise InputError("image", f"float images must be in [0, 1], got [{image.min()}, {image.max()}]")
            # Same numbers as a uint8 camera frame, so the torch side and the runtime agree.
            image = np.rint(image * 255.0).astype(np.uint8)
        batch = validate_images(image)
        if batch.shape[0] != 1:
            raise InputError("image", f"act() takes one image, got a batch of {batch.shape[0]}")
        return batch


def _loop_escape(config: object) -> LoopEscape:
    if not isinstance(config, LoopEscape):
        raise ConfigError("loop_escape", f"must be a LoopEscape or None, got {type(config).__name__}")
    return config
