"""Teacher cache: run a (large) teacher once over the robot frames and keep only its action-bin
distributions, so a student is distilled without the teacher (DESIGN.md "Scale").

    from distill.cache import CacheConfig, TeacherCache, run
    result = run(CacheConfig(teacher="ckpt/teacher", data="data/tabletop", out="cache/tabletop", top_k=16))
    cache = TeacherCache("cache/tabletop")

CLI: `rt2edge distill cache --teacher CKPT --data DATA --out CACHE [--top-k K]`, unchanged under
`accelerate launch` / `torchrun` (data parallel: each process computes every world_size-th shard).
The format is described in distill/cache/format.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distill.cache.config import CacheConfig
from rt2edge.lazy import lazy_getattr

if TYPE_CHECKING:
    from distill.cache.builder import CacheResult


def run(cfg: CacheConfig) -> "CacheResult":
    """The stage's entry point (imports torch and accelerate only when called)."""
    from distill.cache.builder import build_cache

    return build_cache(cfg)


__all__ = ["CacheConfig", "TeacherCache", "run"]
__getattr__ = lazy_getattr("distill.cache", {"TeacherCache": "distill.cache.reader"})
