"""FinetuneConfig validation, the co-training mixture plan and the augmentation (no torch)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distill.finetune.augment import ImageAugmentation
from distill.finetune.config import FinetuneConfig
from distill.finetune.mixture import ROBOT, VQA, CoTrainingMixture, MixtureBatchSampler
from rt2edge.errors import ConfigError


def make(**kw) -> FinetuneConfig:
    base = dict(data="data", out="out", preset="teacher")
    base.update(kw)
    return FinetuneConfig(**base)


@pytest.mark.parametrize("field, kw", [
    ("steps", dict(steps=0)),
    ("batch_size", dict(batch_size=-1)),
    ("batch_size", dict(batch_size=2.5)),
    ("lr", dict(lr=0.0)),
    ("lr", dict(lr=float("nan"))),
    ("vqa_ratio", dict(vqa_ratio=1.0)),
    ("vqa_ratio", dict(vqa_ratio=-0.1)),
    ("warmup_steps", dict(steps=10, warmup_steps=10)),
    ("mixed_precision", dict(mixed_precision="fp8")),
    ("resume", dict(resume="yes")),
    ("max_grad_norm", dict(max_grad_norm=0)),
    ("min_lr_ratio", dict(min_lr_ratio=1.5)),
    ("seed", dict(seed=-1)),
    ("preset", dict(preset=None)),  # neither preset nor init
    ("init", dict(preset=None, init="/nonexistent/checkpoint")),
    ("data", dict(data="")),
])
def test_bad_values_name_the_field(field, kw):
    with pytest.raises(ConfigError) as err:
        make(**kw)
    assert err.value.field == field


def test_preset_and_init_are_exclusive(tmp_path):
    with pytest.raises(ConfigError, match="exactly one"):
        make(init=str(tmp_path))
    assert make(preset=None, init=str(tmp_path)).init == str(tmp_path)


def test_json_round_trip_and_resume_check(tmp_path):
    cfg = make(steps=100, lr=3e-4)
    cfg.save(tmp_path)
    assert FinetuneConfig.load(tmp_path) == cfg
    saved = cfg.to_dict()
    make(steps=100, lr=3e-4, max_steps_per_run=5, log_every=1).check_resumable_from(saved)  # run-only
    with pytest.raises(ConfigError) as err:
        make(steps=100, lr=1e-3).check_resumable_from(saved)
    assert err.value.field == "lr"
    with pytest.raises(ConfigError) as err:
        FinetuneConfig.from_dict({**saved, "learning_rate": 1.0})
    assert err.value.field == "learning_rate"


@pytest.mark.parametrize("batch, ratio", [(32, 0.25), (2, 0.25), (7, 0.3), (5, 0.0), (1, 0.5)])
def test_mixture_ratio_is_respected(batch, ratio):
    mix = CoTrainingMixture(num_robot=50, num_vqa=20, batch_size=batch, vqa_ratio=ratio, seed=0)
    steps = 64
    per_step = [sum(i.source == VQA for i in mix.plan(k)) for k in range(steps)]
    assert all(len(mix.plan(k)) == batch for k in range(3))
    # every batch holds floor or ceil of r * B VQA samples, and the running total is exact
    assert set(per_step) <= {math.floor(ratio * batch), math.ceil(ratio * batch)}
    assert sum(per_step) == math.floor(steps * ratio * batch + 1e-9)


def test_mixture_is_a_pure_function_of_seed_and_step():
    a = CoTrainingMixture(30, 10, 8, 0.25, seed=3)
    b = CoTrainingMixture(30, 10, 8, 0.25, seed=3)
    assert [b.plan(k) for k in (5, 2, 9)] == [a.plan(k) for k in (5, 2, 9)]  # any order
    assert a.plan(0) != CoTrainingMixture(30, 10, 8, 0.25, seed=4).plan(0)
    resumed = list(MixtureBatchSampler(a, start_step=4, end_step=8))
    assert resumed == list(MixtureBatchSampler(a, 0, 8))[4:]


def test_each_epoch_visits_every_robot_frame_once():
    mix = CoTrainingMixture(num_robot=24, num_vqa=4, batch_size=8, vqa_ratio=0.25, seed=0)
    robot = [i.index for k in range(4) for i in mix.plan(k) if i.source == ROBOT]  # 4 * 6 = 24
    assert sorted(robot) == list(range(24))


def test_augmentation_is_seeded_and_keeps_shape():
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    aug = ImageAugmentation()
    out = aug(image, seed=7)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out, aug(image, seed=7))
    assert not np.array_equal(out, aug(image, seed=8))


def test_token_losses_split_sources_and_dims():
    torch = pytest.importorskip("torch")
    from distill.finetune.losses import concat_batches, token_losses

    vocab, action_ids = 12, torch.tensor([11, 10, 9, 8])  # 4 bins, "last" strategy
    # row 0: robot, prompt of 3 then 2 action tokens (bins 1, 3); row 1: VQA answer of 1 token
    robot = {"input_ids": torch.tensor([[1, 2, 3, 10, 8]]), "attention_mask": torch.ones(1, 5, dtype=torch.long),
             "labels": torch.tensor([[-100, -100, -100, 10, 8]]), "pixel_values": torch.zeros(1, 3, 4, 4)}
    vqa = {"input_ids": torch.tensor([[1, 2, 5]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
           "labels": torch.tensor([[-100, -100, 5]]), "pixel_values": torch.zeros(1, 3, 4, 4)}
    batch = concat_batches([robot, vqa], pad_id=0)
    assert batch["input_ids"].shape == (2, 5) and batch["labels"][1].tolist() == [-100, -100, 5, -100, -100]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 0, 0]
    logits = torch.zeros(2, 5, vocab)
    logits[0, 2, 10] = 5.0  # predicts the first action token right (bin 1)
    logits[0, 3, 11] = 5.0  # predicts bin 0 for the second (target bin 3): wrong
    ce_sum, sums = token_losses(logits, batch["labels"], torch.tensor([False, True]), action_ids, 2)
    assert sums.action_tokens.item() == 2 and sums.vqa_tokens.item() == 1
    assert sums.correct_per_dim.tolist() == [1.0, 0.0] and sums.tokens_per_dim.tolist() == [1.0, 1.0]
    assert ce_sum.item() == pytest.approx((sums.action_ce + sums.vqa_ce).item())
    assert sums.vqa_ce.item() == pytest.approx(np.log(vocab))  # uniform logits on the VQA row
