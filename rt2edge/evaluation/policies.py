"""The one policy interface the closed-loop evaluator drives, and adapters onto it.

    class ActionPolicy(Protocol):
        def act(self, image, instruction) -> np.ndarray   # (action_dim,) real units
        def reset(self) -> None                            # optional: start of an episode
        def act_batch(self, images, instructions)         # optional: (B, action_dim), stateless only

Adapters: a torch `VLAPolicy` (its `predict_action`), a deploy artifact (`rt2edge.runtime.Policy`,
whose `act` returns an `Action`), and the simulator's scripted expert (an oracle that reads the
scene, for checking the evaluator and the tasks). Torch and onnxruntime are imported only by the
loader of the kind of policy asked for.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from rt2edge.errors import ActionValueError, ArtifactError, ConfigError

ARTIFACT_MANIFEST = "manifest.json"  # deploy artifact (rt2edge.artifact)
CHECKPOINT_METADATA = "rt2edge.json"  # torch checkpoint (rt2edge.models.checkpoint)


@runtime_checkable
class ActionPolicy(Protocol):
    def act(self, image: np.ndarray, instruction: str) -> np.ndarray:
        """One RGB image (H, W, 3) uint8 + an instruction -> one action (action_dim,), real units."""


def supports_batch(policy: Any) -> bool:
    """A policy that may be stepped in many environments at once: it has `act_batch` and no
    per-episode state (a stateful policy, e.g. the runtime's action guard, runs one env at a time)."""
    return callable(getattr(policy, "act_batch", None)) and not getattr(policy, "stateful", False)


def first_frame_moves(policy: Any, images: np.ndarray, instructions: Sequence[str], batch_size: int) -> np.ndarray:
    """The (n, 2) xy moves of `policy` on n unrelated frames, in batches where it supports them; a
    stateful policy is reset before every frame (each is a first frame)."""
    if supports_batch(policy):
        actions = np.concatenate([
            np.asarray(policy.act_batch(images[i:i + batch_size], instructions[i:i + batch_size]),
                       np.float64).reshape(len(images[i:i + batch_size]), -1)
            for i in range(0, len(images), batch_size)])
    else:
        rows = []
        for image, text in zip(images, instructions):
            reset = getattr(policy, "reset", None)
            if callable(reset):
                reset()
            rows.append(np.asarray(policy.act(image, text), np.float64).reshape(-1))
        actions = np.stack(rows)
    if actions.shape[1] < 2 or not np.all(np.isfinite(actions[:, :2])):
        raise ActionValueError(f"the policy returned actions of shape {actions.shape} / non-finite xy; "
                               "finite (x, y, ...) moves are needed")
    return actions[:, :2]


class VLAPolicyAdapter:
    """A torch `VLAPolicy` (greedy constrained decoding; stateless, so batched)."""

    stateful = False

    def __init__(self, policy: Any, unnorm_key: str | None = None, name: str = "vla-policy"):
        self.policy = policy
        self.unnorm_key = unnorm_key
        self.name = name

    def act(self, image: np.ndarray, instruction: str) -> np.ndarray:
        return np.asarray(self.policy.predict_action(image, instruction, unnorm_key=self.unnorm_key),
                          dtype=np.float64)

    def act_batch(self, images: np.ndarray, instructions: Sequence[str]) -> np.ndarray:
        actions = self.policy.predict_action(np.asarray(images), list(instructions),
                                             unnorm_key=self.unnorm_key)
        return np.asarray(actions, dtype=np.float64).reshape(len(instructions), -1)


class ArtifactPolicyAdapter:
    """A deploy artifact's `rt2edge.runtime.Policy`. Stateful (its action guard remembers the last
    gripper command), so it is reset every episode and stepped in one environment at a time.

    Tolerant of the runtime's return type: an `Action` (its `.values`) or a bare array. Counts the
    safe-fallback actions, which a benchmark must report next to the success rate.
    """

    stateful = True

    def __init__(self, runtime_policy: Any, name: str = "artifact"):
        self.policy = runtime_policy
        self.name = name
        self.safe_fallbacks = 0

    def reset(self, seed: int | None = None) -> None:
        """Start of an episode; `seed` (the episode's) reseeds the runtime's loop escape, so an
        episode's draws do not depend on which episodes ran before it."""
        reset = getattr(self.policy, "reset", None)
        if not callable(reset):
            return
        if seed is not None and getattr(self.policy, "loop", None) is not None:
            reset(seed=seed)
        else:
            reset()

    @property
    def loop_escape(self) -> dict[str, Any] | None:
        """The runtime's loop-escape settings and the actions it sampled so far; None when off."""
        loop = getattr(self.policy, "loop", None)
        if loop is None:
            return None
        return {**dataclasses.asdict(loop.config), "escapes": int(loop.escapes)}

    def act(self, image: np.ndarray, instruction: str) -> np.ndarray:
        action = self.policy.act(image, instruction)
        if getattr(action, "safe_fallback", False):
            self.safe_fallbacks += 1
        values = getattr(action, "values", action)
        return np.asarray(values, dtype=np.float64)


class ScriptedExpertPolicy:
    """The simulator's scripted expert as a policy: an oracle that reads the scene, not the image.

    The evaluator hands it its environment through `attach_env` (so it runs one env at a time).
    Its success rate is the ceiling a cloned policy can reach; far below 100% means a broken task.
    """

    stateful = True
    name = "scripted-expert"

    def __init__(self) -> None:
        self.env: Any = None

    def attach_env(self, env: Any) -> None:
        self.env = env

    def act(self, image: np.ndarray, instruction: str) -> np.ndarray:
        if self.env is None:
            raise RuntimeError("ScriptedExpertPolicy needs attach_env(env) before act()")
        return np.asarray(self.env.expert_action(), dtype=np.float64)


def load_policy(path: str | Path, device: str | None = None, providers: str | Sequence[str] | None = None,
                unnorm_key: str | None = None, loop_escape: Any = None) -> Any:
    """A torch checkpoint folder (rt2edge.json) or a deploy artifact folder (manifest.json) -> an
    ActionPolicy. Imports torch only for a checkpoint and onnxruntime only for an artifact.
    loop_escape (a runtime.LoopEscape) is a runtime option: deploy artifacts only."""
    folder = Path(path)
    if not folder.is_dir():
        raise ArtifactError(f"{str(path)!r} is not a folder (expected a checkpoint or a deploy artifact)")
    if (folder / ARTIFACT_MANIFEST).is_file():
        from rt2edge.runtime import Policy  # onnxruntime: the robot-side stack

        return ArtifactPolicyAdapter(Policy.load(folder, providers=providers, loop_escape=loop_escape),
                                     name=folder.name)
    if (folder / CHECKPOINT_METADATA).is_file():
        if loop_escape is not None:
            raise ConfigError("loop_escape", f"{folder} is a torch checkpoint; loop escape runs in the "
                                             "deploy runtime: export it (`rt2edge export`) and pass the artifact")
        from rt2edge.models import VLAPolicy  # torch + transformers: the toolkit extra

        policy = VLAPolicy.from_pretrained(folder)
        if device is not None:
            policy.to(device)
        return VLAPolicyAdapter(policy.eval(), unnorm_key=unnorm_key, name=folder.name)
    raise ArtifactError(f"{folder}: neither a checkpoint ({CHECKPOINT_METADATA}) nor a deploy artifact "
                        f"({ARTIFACT_MANIFEST})")
