"""Teacher vs students on held-out frames: size and action-token agreement with the teacher.

    report = compare(CompareConfig(teacher="ckpt/teacher", students=["ckpt/s"], data="data/tabletop",
                                   cache="cache/tabletop", frames=500))

Held-out frames are those of episodes with no frame in the cache (the student never trained on
them). For each model: parameter counts; the free-running greedy decode's agreement with the
teacher's (per token, per dim, whole action: what changes on the robot); the teacher-forced top-1
agreement (each token predicted from the ground-truth prefix, the quantity KD trains); accuracy
against the dataset's bins. Closed-loop success is `rt2edge eval CKPT` (rt2edge.evaluation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.checks import existing_dir, positive_int, required
from rt2edge.errors import ConfigError


@dataclass(kw_only=True)
class CompareConfig:
    teacher: str
    students: list[str] = field(default_factory=list)
    data: str
    cache: str | None = None  # frames of episodes in this cache are not held out: skipped
    frames: int = 500
    batch_size: int = 32

    def __post_init__(self) -> None:
        existing_dir("teacher", self.teacher, "checkpoint folder")
        for s in self.students:
            existing_dir("students", s, "checkpoint folder")
        required("data", self.data, "the dataset to take held-out frames from")
        existing_dir("data", self.data, "dataset folder")
        if self.cache is not None:
            existing_dir("cache", self.cache, "teacher cache")
        positive_int("frames", self.frames)
        positive_int("batch_size", self.batch_size)


def held_out_rows(dataset: Any, cached_rows: np.ndarray, frames: int) -> np.ndarray:
    """The first `frames` rows of episodes that share no frame with `cached_rows`."""
    used = set(dataset.episode_index[cached_rows].tolist()) if len(cached_rows) else set()
    rows = np.flatnonzero(~np.isin(dataset.episode_index, list(used)))[:frames]
    if len(rows) == 0:
        raise ConfigError("frames", "no held-out episode left: every episode has frames in the cache")
    return rows


def predictions(policy: Any, dataset: Any, rows: np.ndarray, gt_bins: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Greedy bins and teacher-forced argmax bins (forced with `gt_bins`) of `policy` on `rows`."""
    import torch

    tok = policy.action_tokenizer
    greedy, forced = [], []
    for start in range(0, len(rows), batch_size):
        frames = [dataset[int(r)] for r in rows[start:start + batch_size]]
        images, texts = np.stack([f.image for f in frames]), [f.instruction for f in frames]
        greedy.append(tok.ids_to_bins(policy.predict_action_tokens(images, texts)))
        batch = policy.build_action_token_batch(images, texts, tok.token_ids[gt_bins[start:start + batch_size]])
        with torch.inference_mode():
            forced.append(policy.action_logits(batch).argmax(-1).cpu().numpy())
    return {"greedy": np.concatenate(greedy), "forced": np.concatenate(forced)}


def agreement(a: np.ndarray, b: np.ndarray, dim_names: list[str]) -> dict[str, Any]:
    same = a == b
    return {"tokens": round(float(same.mean()), 4), "actions": round(float(same.all(-1).mean()), 4),
            "per_dim": {n: round(float(v), 4) for n, v in zip(dim_names, same.mean(0))}}


def compare(cfg: CompareConfig) -> dict[str, Any]:
    from distill.cache.fingerprint import dataset_fingerprint
    from distill.cache.reader import TeacherCache
    from distill.kd.students import check_action_space
    from rt2edge.data import EpisodeDataset
    from rt2edge.models import VLAPolicy

    dataset = EpisodeDataset(cfg.data)
    cached = np.zeros(0, np.int64)
    if cfg.cache:
        cache = TeacherCache(cfg.cache, verify=False)
        if cache.dataset_fingerprint != dataset_fingerprint(dataset):
            raise ConfigError("cache", f"{cfg.cache} was built from another dataset than {cfg.data}")
        cached = cache.frames
    rows = held_out_rows(dataset, cached, cfg.frames)
    teacher = VLAPolicy.from_pretrained(cfg.teacher)
    tok = teacher.action_tokenizer
    dims = [tok.name_of(d) for d in range(tok.tokens_per_action)]
    gt = tok.encode_bins(dataset.actions[rows])
    reference = predictions(teacher, dataset, rows, gt, cfg.batch_size)
    models = []
    for path in [cfg.teacher, *cfg.students]:
        policy = teacher if path == cfg.teacher else VLAPolicy.from_pretrained(path)
        check_action_space(policy.action_tokenizer, tok)
        pred = reference if policy is teacher else predictions(policy, dataset, rows, gt, cfg.batch_size)
        models.append({
            "model": str(path), "family": policy.family, "parameters": policy.parameter_counts(),
            "greedy_agreement_with_teacher": agreement(pred["greedy"], reference["greedy"], dims),
            "forced_agreement_with_teacher": agreement(pred["forced"], reference["forced"], dims),
            "greedy_accuracy": agreement(pred["greedy"], gt, dims),
        })
    return {"data": cfg.data, "held_out_frames": int(len(rows)),
            "held_out_episodes": int(len(np.unique(dataset.episode_index[rows]))),
            "config": asdict(cfg), "models": models}


def save_report(report: dict[str, Any], path: str | Path) -> Path:
    from rt2edge.atomic import atomic_write_json

    atomic_write_json(Path(path), report)
    return Path(path)
