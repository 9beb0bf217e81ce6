"""Students for distillation: a preset, a checkpoint, or the teacher with layers dropped.

Whatever its origin, a student must write actions with the cache's bins: same number of bins,
same action dims (+ terminate), same normalization, so that bin b means the same action for both.
Its text tokenizer, prompt token ids and action-token ids are its own.
"""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from rt2edge.actions import ActionTokenizer
from rt2edge.errors import ConfigError


def check_action_space(student: ActionTokenizer, cache: ActionTokenizer) -> None:
    """Refuse a student whose bins would not mean what the cache's bins mean."""
    for name in ("n_bins", "num_dims", "terminate"):
        ours, theirs = getattr(student, name), getattr(cache, name)
        if ours != theirs:
            raise ConfigError(f"student.{name}", f"the student's action tokenizer has {name}={ours!r}, "
                                                 f"the teacher cache {theirs!r}: they must share the action bins")
    same_bounds = (np.allclose(student.action_low, cache.action_low, rtol=1e-6, atol=1e-9)
                   and np.allclose(student.action_high, cache.action_high, rtol=1e-6, atol=1e-9))
    if student.normalization != cache.normalization or not same_bounds:
        raise ConfigError("student.statistics", "the student's action normalization (statistics, bounds) "
                                                "differs from the teacher cache's: bin b would decode to "
                                                "another action; start it from the same dataset statistics")


def preset_student(name: str, action: ActionTokenizer, unnorm_key: str | None, seed: int) -> Any:
    """A fresh preset whose action tokenizer bins actions exactly like `action` (the teacher's)."""
    from rt2edge.models import ActionVocabConfig, build_preset

    vocab = ActionVocabConfig(n_bins=action.n_bins, num_dims=action.num_dims, terminate=action.terminate,
                              normalization=action.normalization)
    statistics = None if action.statistics is None else {unnorm_key or "default": action.statistics}
    policy = build_preset(name, statistics=statistics, seed=seed, action=vocab)
    # Settings ActionVocabConfig does not carry: copy them so the bins decode identically.
    policy.action_tokenizer = replace(policy.action_tokenizer, normalize_mask=action.normalize_mask.copy(),
                                      dim_names=action.dim_names)
    return policy


def kept_layers(num_layers: int, keep_every: int) -> list[int]:
    """Layers 0, k, 2k, ... (DistilBERT's every-other-layer initialization for k = 2)."""
    return list(range(0, num_layers, keep_every))


def layer_list(model: nn.Module, group: nn.Module) -> tuple[str, nn.ModuleList]:
    """The full name and the ModuleList of the transformer layers inside `group`."""
    names = {id(m): n for n, m in model.named_modules()}
    found = [m for n, m in group.named_modules() if isinstance(m, nn.ModuleList) and n.split(".")[-1] == "layers"]
    if len(found) != 1:
        raise ConfigError("from_teacher", f"expected one `layers` list in {type(group).__name__}, found {len(found)}")
    return names[id(found[0])], found[0]


def drop_layers(teacher: Any, keep_every: int) -> Any:
    """A copy of `teacher` (a VLAPolicy) with every `keep_every`-th decoder and vision layer.

    The new model is built from the teacher's config with fewer layers, then every tensor is
    copied: embeddings, vision embeddings, projector, final norms and LM head unchanged, kept layer
    i of the teacher -> layer i // keep_every. Tokenizers, prompt and action tokenizer are shared.
    """
    import torch
    from transformers import AutoModelForImageTextToText

    from rt2edge.models import VLAPolicy
    from rt2edge.models.families import get_family

    model = teacher.model
    groups = get_family(teacher.family).parameter_groups(model)
    config = copy.deepcopy(model.config)
    renames: dict[str, dict[int, int]] = {}
    for group, sub_config in (("language", config.get_text_config()), ("vision", config.vision_config)):
        prefix, layers = layer_list(model, groups[group])
        kept = kept_layers(len(layers), keep_every)
        renames[prefix] = {old: new for new, old in enumerate(kept)}
        sub_config.num_hidden_layers = len(kept)
        if getattr(sub_config, "layer_types", None):  # per-layer attention kinds follow their layer
            sub_config.layer_types = [sub_config.layer_types[i] for i in kept]
    state = {}
    for key, value in model.state_dict().items():
        new_key = _renamed(key, renames)
        if new_key is not None:
            state[new_key] = value
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; keep the caller's RNG
        student = AutoModelForImageTextToText.from_config(config, dtype=teacher.dtype)
    student.load_state_dict(state, strict=True)
    return VLAPolicy(student.eval(), teacher.text_tokenizer, teacher.action_tokenizer, teacher.prompt,
                     teacher.image_preprocessing, teacher.family, teacher.dataset_statistics,
                     teacher.default_unnorm_key)


def _renamed(key: str, renames: dict[str, dict[int, int]]) -> str | None:
    """`prefix.{i}.rest` -> `prefix.{new i}.rest`, None for a dropped layer, other keys unchanged."""
    for prefix, mapping in renames.items():
        match = re.match(re.escape(prefix) + r"\.(\d+)\.(.*)$", key)
        if match:
            old = int(match.group(1))
            return f"{prefix}.{mapping[old]}.{match.group(2)}" if old in mapping else None
    return key


def build_student(cfg: Any, cache: Any) -> Any:
    """The student of a DistillConfig for a TeacherCache, checked against the cache's bins."""
    from rt2edge.models import VLAPolicy

    if cfg.from_teacher is not None:
        policy = drop_layers(VLAPolicy.from_pretrained(cfg.from_teacher), cfg.keep_every)
    elif Path(cfg.student).is_dir():
        policy = VLAPolicy.from_pretrained(cfg.student)
    else:
        try:
            policy = preset_student(cfg.student, cache.action_tokenizer, cache.index.get("unnorm_key"), cfg.seed)
        except ConfigError as exc:
            if exc.field != "preset":
                raise
            raise ConfigError("student", f"{cfg.student!r} is neither a checkpoint folder nor a preset "
                                         f"({exc})") from None
    check_action_space(policy.action_tokenizer, cache.action_tokenizer)
    return policy
