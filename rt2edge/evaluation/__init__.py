"""Closed-loop evaluation of a policy in the built-in tabletop simulator (no torch here).

    from rt2edge.evaluation import evaluate, load_policy
    result = evaluate(load_policy("ckpt_or_artifact"), episodes=50, seed=0)
    print(result.format_table()); result.save_json("eval.json")
    print(probe_language(policy, scenes=100).format_line())  # does it follow the instruction?
    print(expert_agreement(policy, episodes=20).format_table())  # errors on its own states?

Any object with `act(image, instruction) -> action` is a policy (see policies.py); torch is
imported only when a torch checkpoint is loaded, onnxruntime only for a deploy artifact.
"""

from __future__ import annotations

from rt2edge.evaluation.policies import (
    ActionPolicy,
    ArtifactPolicyAdapter,
    ScriptedExpertPolicy,
    VLAPolicyAdapter,
    load_policy,
    supports_batch,
)
from rt2edge.evaluation.expert_agreement import ExpertAgreementResult, expert_agreement
from rt2edge.evaluation.language_probe import LanguageProbeResult, probe_language
from rt2edge.evaluation.results import EpisodeResult, EvaluationResult, GroupSummary, wilson_interval
from rt2edge.evaluation.rollout import SPLITS, episode_seed, evaluate

__all__ = [
    "ActionPolicy", "ArtifactPolicyAdapter", "EpisodeResult", "EvaluationResult", "ExpertAgreementResult",
    "GroupSummary", "expert_agreement",
    "LanguageProbeResult", "probe_language",
    "SPLITS", "ScriptedExpertPolicy", "VLAPolicyAdapter", "episode_seed", "evaluate", "load_policy",
    "save_rollout", "supports_batch", "wilson_interval",
]


def save_rollout(*args, **kwargs):
    """See rt2edge.evaluation.media.save_rollout (imported on use: pillow is optional)."""
    from rt2edge.evaluation.media import save_rollout as _save

    return _save(*args, **kwargs)
