"""What a teacher cache was made from: the teacher checkpoint's hash, the dataset's fingerprint.

A student run refuses a cache whose dataset fingerprint differs from the dataset it reads images
from (the cache is keyed by frame row: another dataset would silently pair the wrong images and
targets), and a resumed cache run refuses a different teacher.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from rt2edge.artifact import sha256_file

# The files that define a checkpoint's model and its outputs. A run folder also holds training
# state, logs and configs: they do not change what the teacher predicts, so they are not hashed.
_MODEL_FILES = ("config.json", "generation_config.json", "rt2edge.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json")
_MODEL_SUFFIXES = (".safetensors", ".safetensors.index.json")


def checkpoint_sha256(folder: str | Path) -> str:
    """sha256 over (name, sha256) of the checkpoint's model files, in name order."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and (path.name in _MODEL_FILES or path.name.endswith(_MODEL_SUFFIXES)):
            digest.update(f"{path.name}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def dataset_fingerprint(dataset: Any) -> str:
    """sha256 over every frame's encoded image, instruction, action and indices, in row order.

    Content, not file names or timestamps: a regenerated identical dataset has the same
    fingerprint, an edited frame or a reordered episode does not.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(sorted(dataset.tasks.items()), sort_keys=True).encode())
    for column in (dataset.actions.astype("<f4"), dataset.episode_index.astype("<i8"),
                   dataset.frame_index.astype("<i8"), dataset.task_index.astype("<i8")):
        digest.update(np.ascontiguousarray(column).tobytes())
    for i in range(len(dataset)):
        image = dataset.encoded_image(i)
        digest.update(len(image).to_bytes(8, "little"))
        digest.update(image)
    return digest.hexdigest()
