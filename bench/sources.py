"""What is benched: sources (checkpoint / artifact folders) and the variants (source x backend) run.

A folder is an artifact when it holds `manifest.json`, a checkpoint when it holds `rt2edge.json`
(the same markers `rt2edge.evaluation.load_policy` uses); anything else is refused by path.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from rt2edge.errors import ArtifactError
from rt2edge.optional import require

ARTIFACT_MARKER = "manifest.json"
CHECKPOINT_MARKER = "rt2edge.json"


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str  # "artifact" | "checkpoint"
    name: str  # short, unique within one run

    def size_bytes(self) -> int:
        """Bytes a robot has to ship: the manifest's listed graphs/files for an artifact (what
        load verifies), the regular files at the top of a checkpoint folder. `save_pretrained`
        writes flat; the subfolders a training run adds (training_state/: optimizer and RNG
        state for a resume, several times the weights) are not part of the model, and counting
        them would also inflate the resident bytes of the checkpoint's roofline."""
        if self.kind == "artifact":
            manifest = json.loads((self.path / ARTIFACT_MARKER).read_text(encoding="utf-8"))
            listed = [*manifest.get("graphs", {}).values(), *manifest.get("files", {}).values()]
            return int(sum(int(entry.get("bytes", 0)) for entry in listed))
        return int(sum(p.stat().st_size for p in self.path.iterdir() if p.is_file()))

    def hf_config(self) -> dict[str, Any] | None:
        """The HF config.json of a checkpoint (for the config-based cost model), else None."""
        file = self.path / "config.json"
        if self.kind != "checkpoint" or not file.is_file():
            return None
        return json.loads(file.read_text(encoding="utf-8"))

    def contract(self) -> tuple[Any, Any, Path]:
        """(ActionTokenizer, PromptFormat, tokenizer.json path), read from the manifest or
        rt2edge.json alone (no model, no torch)."""
        if self.kind == "artifact":
            from rt2edge.artifact import load_manifest

            manifest = load_manifest(self.path, verify=False)
            return (manifest.action_tokenizer(), manifest.prompt_format(),
                    self.path / manifest.files["tokenizer"].file)
        from rt2edge.models.checkpoint import read_metadata

        meta = read_metadata(self.path)
        return meta.action_tokenizer, meta.prompt, self.path / "tokenizer.json"

    def prompt_tokens(self, instructions: Iterable[str]) -> int:
        """Median prompt length (image placeholders + text) over `instructions`, tokenized as the
        runtime does: the decoder cost of an action depends on it."""
        return int(statistics.median(len(ids) for ids in self._prompt_ids(instructions)))

    def tokens_before_image(self, instructions: Iterable[str]) -> int:
        """Median count of prompt tokens before the image placeholders (bos + text for an
        instruction-first prompt): what the runtime's prefix cache keeps per instruction."""
        image_token = self.contract()[1].image_token_id
        return int(statistics.median(int(np.argmax(ids == image_token)) for ids in self._prompt_ids(instructions)))

    def _prompt_ids(self, instructions: Iterable[str]) -> list[np.ndarray]:
        tokenizers = require("tokenizers", extra="cpu", purpose="counting prompt tokens")
        _, prompt, file = self.contract()
        tok = tokenizers.Tokenizer.from_file(str(file))
        return [np.asarray(prompt.build_input_ids(tok.encode(prompt.text(t), add_special_tokens=False).ids))
                for t in sorted(set(instructions))]


@dataclass(frozen=True)
class Variant:
    source: Source
    backend: str

    @property
    def label(self) -> str:
        return f"{self.source.name}/{self.backend}"


def classify(path: str | Path) -> str:
    folder = Path(path)
    if not folder.exists():
        raise ArtifactError(f"{folder}: no such checkpoint or artifact folder")
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: is a file, expected a checkpoint or artifact folder")
    if (folder / ARTIFACT_MARKER).is_file():
        return "artifact"
    if (folder / CHECKPOINT_MARKER).is_file():
        return "checkpoint"
    raise ArtifactError(f"{folder}: neither a checkpoint ({CHECKPOINT_MARKER}) nor a deploy artifact "
                        f"({ARTIFACT_MARKER})")


def resolve_sources(paths: Sequence[str | Path]) -> list[Source]:
    """Sources named by their folder, or by their path where two folders share a name."""
    folders = [Path(p) for p in paths]
    kinds = [classify(p) for p in folders]
    names = [p.name or str(p) for p in folders]
    clashes = {n for n in names if names.count(n) > 1}
    return [Source(p, k, str(p) if n in clashes else n) for p, k, n in zip(folders, kinds, names)]


def plan_variants(sources: Sequence[Source], checkpoint_backends: Sequence[str]) -> list[Variant]:
    """Checkpoints x the checkpoint backends, artifacts x the runtime; in the order given."""
    out: list[Variant] = []
    for source in sources:
        backends = ("runtime",) if source.kind == "artifact" else tuple(checkpoint_backends)
        out.extend(Variant(source, b) for b in backends)
    return out
