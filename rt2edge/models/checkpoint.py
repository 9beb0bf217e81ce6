"""The torch-side checkpoint: a Hugging Face `save_pretrained` folder plus `rt2edge.json`.

```
CHECKPOINT/
  config.json, model.safetensors, generation_config.json   the HF model (never pickled)
  tokenizer.json, tokenizer_config.json                     the text tokenizer
  rt2edge.json                                              this module's metadata, written last
```
rt2edge.json (format_version 1; 2 for a parallel-decoding policy, so older rt2edge refuses it):
```json
{"format": "rt2edge-checkpoint", "format_version": 1, "family": "llava",
 "decoding": "autoregressive" | "parallel",     (absent: autoregressive)
 "decoding_config": {...},                       (parallel: ParallelDecodingConfig.to_dict())
 "action_tokenizer": {...ActionTokenizer.to_dict()...},
 "dataset_statistics": {"<dataset name>": {...ActionStatistics.to_dict()...}},
 "default_unnorm_key": "<dataset name>" | null,
 "prompt": {...PromptFormat.to_dict()...},
 "image_preprocessing": {...ImagePreprocessing.to_dict()...},
 "rt2edge_version": "0.1.0"}
```
The action tokenizer's statistics are those of `default_unnorm_key`; the other datasets' are kept
for `predict_action(..., unnorm_key=...)` (OpenVLA's convention).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rt2edge import __version__
from rt2edge.actions import ActionStatistics, ActionTokenizer
from rt2edge.artifact import DECODING_VERSIONS, read_json_file, required_format_version, version_reason
from rt2edge.errors import ArtifactError
from rt2edge.observation import ImagePreprocessing, PromptFormat

METADATA_FILE = "rt2edge.json"
FORMAT = "rt2edge-checkpoint"
FORMAT_VERSION = 3  # the newest this reader reads; a checkpoint is written with the lowest that fits


@dataclass
class CheckpointMetadata:
    family: str
    action_tokenizer: ActionTokenizer
    dataset_statistics: dict[str, ActionStatistics]
    default_unnorm_key: str | None
    prompt: PromptFormat
    image_preprocessing: ImagePreprocessing
    # How the policy decodes (rt2edge.artifact.DECODING_VERSIONS) and that mode's own settings.
    decoding: str = "autoregressive"
    decoding_config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        extra = {"decoding_config": self.decoding_config} if self.decoding_config else {}
        return {
            "format": FORMAT,
            # [Contract] version 1 readers know only autoregressive, image-first policies: a parallel
            # checkpoint says 2, an instruction-first one 3, so older readers refuse them.
            "format_version": required_format_version(self.decoding, self.prompt.to_dict()),
            "family": self.family,
            "decoding": self.decoding,
            **extra,
            "action_tokenizer": self.action_tokenizer.to_dict(),
            "dataset_statistics": {k: v.to_dict() for k, v in self.dataset_statistics.items()},
            "default_unnorm_key": self.default_unnorm_key,
            "prompt": self.prompt.to_dict(),
            "image_preprocessing": self.image_preprocessing.to_dict(),
            "rt2edge_version": __version__,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = METADATA_FILE) -> CheckpointMetadata:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ArtifactError(f"{source}: not an rt2edge checkpoint (format must be {FORMAT!r})")
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise ArtifactError(f"{source}: format_version {version!r} is not supported "
                                f"(this rt2edge reads 1..{FORMAT_VERSION}); upgrade rt2edge")
        try:
            stats = {str(k): ActionStatistics.from_dict(v) for k, v in data.get("dataset_statistics", {}).items()}
            key = data.get("default_unnorm_key")
            if key is not None and key not in stats:
                raise ValueError(f"default_unnorm_key {key!r} is not one of {sorted(stats)}")
            decoding = data.get("decoding", "autoregressive")
            if decoding not in DECODING_VERSIONS:
                raise ValueError(f"decoding must be one of {tuple(DECODING_VERSIONS)}, got {decoding!r}")
            needed = required_format_version(decoding, data["prompt"])
            if version < needed:
                raise ValueError(f"{version_reason(decoding, data['prompt'])} needs format_version >= {needed}, "
                                 f"got {version}")
            return cls(
                family=str(data["family"]),
                action_tokenizer=ActionTokenizer.from_dict(data["action_tokenizer"]),
                dataset_statistics=stats,
                default_unnorm_key=key,
                prompt=PromptFormat.from_dict(data["prompt"]),
                image_preprocessing=ImagePreprocessing.from_dict(data["image_preprocessing"]),
                decoding=decoding,
                decoding_config=dict(data.get("decoding_config") or {}),
            )
        except KeyError as exc:
            raise ArtifactError(f"{source}: missing key {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"{source}: invalid content: {exc}") from exc


def read_metadata(directory: str | os.PathLike) -> CheckpointMetadata:
    """rt2edge.json of a checkpoint folder; missing or corrupt -> ArtifactError."""
    path = Path(directory) / METADATA_FILE
    if not Path(directory).is_dir():
        raise ArtifactError(f"checkpoint {str(directory)!r} does not exist or is not a folder")
    data = read_json_file(path, "not an rt2edge checkpoint (save it with VLAPolicy.save_pretrained)")
    return CheckpointMetadata.from_dict(data, source=str(path))


def write_metadata(directory: str | os.PathLike, metadata: CheckpointMetadata) -> None:
    path = Path(directory) / METADATA_FILE
    path.write_text(json.dumps(metadata.to_dict(), indent=2) + "\n", encoding="utf-8")


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder next to `target`; on success it replaces `target` by rename, so a
    crash mid-save leaves either the old checkpoint or the new one, never half of each."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        _apply_umask(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _apply_umask(folder: Path) -> None:
    """mkdtemp (and HF's own temp files) create owner-only modes; a checkpoint is meant to be
    shared like any other folder the user writes, so give it the modes the umask allows."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
