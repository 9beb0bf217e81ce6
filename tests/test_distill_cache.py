"""Teacher cache: round trip against the teacher, top-k, resume after a crash, refusal of another
cache's folder, and 2 gloo processes == 1 process, bit for bit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from distill.cache import CacheConfig, TeacherCache, run  # noqa: E402
from distill.cache import format as fmt  # noqa: E402
from distill.cache.teacher import load_teacher, teacher_targets  # noqa: E402
from distill_factory import make_dataset, make_teacher, run_torchrun  # noqa: E402
from rt2edge.errors import ArtifactError, ConfigError  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache-inputs")
    data = make_dataset(root / "data", episodes=4)  # 43 frames
    return data, make_teacher(root / "teacher", data)


@pytest.fixture(scope="module")
def full_cache(inputs, tmp_path_factory):
    data, teacher = inputs
    out = tmp_path_factory.mktemp("caches") / "full"
    result = run(config(inputs, out))
    return out, result


def config(inputs, out, **kw) -> CacheConfig:
    data, teacher = inputs
    return CacheConfig(**{**dict(teacher=teacher, data=data, out=str(out), shard_size=16, batch_size=8,
                                 progress=False), **kw})


def test_round_trip_equals_the_teacher(inputs, full_cache):
    from rt2edge.data import EpisodeDataset

    out, result = full_cache
    assert (result.frames, result.frames_computed, result.shards, result.shards_skipped) == (43, 43, 3, 0)
    cache = TeacherCache(out)
    index = json.loads((out / fmt.INDEX_FILE).read_text())
    assert index["complete"] and [s["start"] for s in index["shards"]] == [0, 16, 32]
    assert all(len(s["sha256"]) == 64 for s in index["shards"])
    assert result.bytes_per_frame == pytest.approx(index["bytes"] / 43)
    assert result.bytes_per_frame > 8 * 256 * 2  # full fp16 distributions

    dataset = EpisodeDataset(inputs[0])
    policy = load_teacher(inputs[1])
    rows = [0, 17, 42]
    direct = teacher_targets(policy, [dataset[i] for i in rows], greedy=True)
    np.testing.assert_allclose(cache.log_probs(rows), direct["log_probs"], atol=0.02, rtol=2e-3)  # fp16
    assert np.array_equal(cache.gt_bins(rows), policy.action_tokenizer.encode_bins(dataset.actions[rows]))
    assert np.array_equal(cache.greedy_bins(rows), direct["greedy_bins"])
    # big-model loading (what shards a teacher over several GPUs) gives the same targets
    sharded = teacher_targets(load_teacher(inputs[1], device_map="cpu"), [dataset[i] for i in rows], greedy=False)
    np.testing.assert_array_equal(sharded["log_probs"], direct["log_probs"])
    # the distributions are the teacher's at the ground-truth prefix: peaked, and not all alike
    assert np.exp(cache.log_probs(range(43))).max(-1).mean() > 0.3
    assert len({tuple(b) for b in cache.log_probs(range(43)).argmax(-1)}) > 1


def test_top_k_storage(inputs, full_cache, tmp_path):
    result = run(config(inputs, tmp_path / "top8", top_k=8, greedy=False))
    assert result.bytes_per_frame < full_cache[1].bytes_per_frame / 8
    full, top = TeacherCache(full_cache[0]), TeacherCache(tmp_path / "top8")
    assert not top.has_greedy and top.top_k == 8
    best = full.log_probs(range(43)).argmax(-1)
    assert np.array_equal(top.log_probs(range(43)).argmax(-1), best)
    p_full, p_top = np.exp(full.log_probs(range(43))), np.exp(top.log_probs(range(43)))
    tail = 1.0 - np.sort(p_full, -1)[..., -8:].sum(-1)  # the mass the top 8 miss
    assert np.all(np.abs(p_full - p_top).sum(-1) <= 2 * tail + 0.01)  # only the tail is approximated
    with pytest.raises(ConfigError) as err:
        run(config(inputs, tmp_path / "bad", top_k=256))
    assert err.value.field == "top_k"


def test_resume_skips_finished_shards_and_never_reads_half_written_ones(inputs, full_cache, tmp_path, monkeypatch):
    out = tmp_path / "crash"
    real_write, calls = fmt.write_shard, []

    def crash_on_second_shard(root, plan, tensors, metadata):
        calls.append(plan.index)
        if len(calls) == 2:  # the process dies while writing shard 1: a temp file is left behind
            (root / fmt.SHARD_DIR / f".shard-{plan.index:05d}.safetensors.x1.tmp").write_bytes(b"half")
            raise KeyboardInterrupt
        return real_write(root, plan, tensors, metadata)

    monkeypatch.setattr(fmt, "write_shard", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        run(config(inputs, out))
    with pytest.raises(ArtifactError, match="unfinished"):
        TeacherCache(out)
    monkeypatch.setattr(fmt, "write_shard", real_write)
    result = run(config(inputs, out))
    assert (result.shards_skipped, result.frames_computed) == (1, 43 - 16)
    assert not list((out / fmt.SHARD_DIR).glob(".*.tmp"))
    # a shard corrupted on disk is detected by its hash and recomputed; the rest are skipped
    shard = out / fmt.SHARD_DIR / "shard-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-7] + b"corrupt")
    with pytest.raises(ArtifactError, match="sha256"):
        TeacherCache(out)
    result = run(config(inputs, out, batch_size=4))  # batch size may change on resume
    assert (result.shards_skipped, result.frames_computed) == (2, 11)
    expected = json.loads((full_cache[0] / fmt.INDEX_FILE).read_text())
    resumed = json.loads((out / fmt.INDEX_FILE).read_text())
    assert [s["sha256"] for s in resumed["shards"][:2]] == [s["sha256"] for s in expected["shards"][:2]]


def test_a_folder_of_another_cache_is_refused(inputs, full_cache, tmp_path):
    out = tmp_path / "other"
    shutil.copytree(full_cache[0], out)
    with pytest.raises(ConfigError) as err:
        run(config(inputs, out, greedy=False))
    assert err.value.field == "greedy"
    with pytest.raises(ConfigError) as err:
        run(config(inputs, out, max_frames=20))
    assert err.value.field == "max_frames"
    with pytest.raises(ConfigError) as err:
        CacheConfig(teacher=inputs[1], data=inputs[0], out=str(out), dtype="int8")
    assert err.value.field == "dtype"


SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from distill.cache import CacheConfig, run
run(CacheConfig(teacher=sys.argv[1], data=sys.argv[2], out=sys.argv[3], shard_size=16, batch_size=8,
                progress=False))
"""


def test_two_gloo_processes_write_the_same_cache_as_one(inputs, full_cache, tmp_path):
    """torchrun, 2 CPU processes on gloo: shards 0 and 2 on rank 0, shard 1 on rank 1, the index
    merged by rank 0. Every byte equals the 1-process cache."""
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    script = tmp_path / "cache_run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "two"
    run_torchrun(script, [inputs[1], inputs[0], str(out)])
    one = json.loads((full_cache[0] / fmt.INDEX_FILE).read_text())
    two = json.loads((out / fmt.INDEX_FILE).read_text())
    assert two == one
    for record in one["shards"]:
        assert (out / record["file"]).read_bytes() == (full_cache[0] / record["file"]).read_bytes()
