"""Where the action bins live in a VLM's vocabulary, and the dataset statistics that unnormalize them.

The three strategies of `rt2edge.actions` (last / least_frequent / append) are chosen here for a
concrete model + text tokenizer; `append` also grows the model's embeddings and LM head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from transformers import PreTrainedModel, PreTrainedTokenizerFast

from rt2edge.actions import NORMALIZATIONS, STRATEGIES, ActionStatistics, ActionTokenizer, least_frequent_token_ids
from rt2edge.errors import ConfigError
from rt2edge.models.text_tokenizer import token_counts

DEFAULT_DATASET = "default"


@dataclass(frozen=True)
class ActionVocabConfig:
    """How actions become tokens. RT-2's action space: 7 dims + terminate, 256 bins.

    normalization None means: "q01_q99" (OpenVLA) when statistics are given, "none" otherwise
    (the actions are already in [-1, 1]).
    """

    strategy: str = "append"
    n_bins: int = 256
    num_dims: int = 7
    terminate: bool = True
    normalization: str | None = None
    # The vocabulary the action ids are counted in; None: the model's embedding rows. OpenVLA uses
    # the Llama tokenizer's 32000 base ids while its embedding table is padded to 32064 rows, so
    # `last` with vocab_size=32000 gives OpenVLA's exact ids (31744-31999).
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError("action.strategy", f"must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.normalization is not None and self.normalization not in NORMALIZATIONS:
            raise ConfigError("action.normalization",
                              f"must be one of {NORMALIZATIONS} or None, got {self.normalization!r}")
        if self.n_bins < 2:
            raise ConfigError("action.n_bins", f"must be >= 2, got {self.n_bins}")
        if self.num_dims < 1:
            raise ConfigError("action.num_dims", f"must be >= 1, got {self.num_dims}")
        if self.vocab_size is not None and self.vocab_size < self.n_bins:
            raise ConfigError("action.vocab_size", f"must be >= n_bins={self.n_bins}, got {self.vocab_size}")


def as_dataset_statistics(statistics: Any) -> dict[str, ActionStatistics]:
    """None | ActionStatistics | {name: ActionStatistics or its dict} -> {name: ActionStatistics}.

    A checkpoint may hold statistics of several datasets (OpenVLA's `unnorm_key`); a bare
    ActionStatistics is stored under "default".
    """
    if statistics is None:
        return {}
    if isinstance(statistics, ActionStatistics):
        return {DEFAULT_DATASET: statistics}
    if not isinstance(statistics, Mapping):
        raise ConfigError("statistics", f"expected ActionStatistics or a mapping of them, "
                                        f"got {type(statistics).__name__}")
    out = {}
    for name, stats in statistics.items():
        if not isinstance(name, str) or not name:
            raise ConfigError("statistics", f"dataset names must be non-empty strings, got {name!r}")
        out[name] = stats if isinstance(stats, ActionStatistics) else ActionStatistics.from_dict(stats)
    return out


def _token_ids(cfg: ActionVocabConfig, vocab_size: int, tokenizer: PreTrainedTokenizerFast,
               corpus: Iterable[str] | None):
    special = set(tokenizer.all_special_ids)
    if cfg.strategy == "least_frequent":
        if corpus is None:
            raise ConfigError("corpus", "strategy 'least_frequent' needs a text corpus to count token use")
        counts = token_counts(tokenizer, corpus, vocab_size)
        return least_frequent_token_ids(counts, cfg.n_bins, exclude_ids=special)
    if cfg.strategy == "last":
        clash = sorted(i for i in special if vocab_size - cfg.n_bins <= i < vocab_size)
        if clash:
            raise ConfigError("action.strategy", f"'last' would overwrite special token ids {clash}; "
                                                 "use 'least_frequent' or 'append'")
    return None  # last / append: the ids follow from vocab_size


def make_action_tokenizer(cfg: ActionVocabConfig, embedding_rows: int, tokenizer: PreTrainedTokenizerFast,
                          corpus: Iterable[str] | None = None,
                          statistics: ActionStatistics | None = None) -> ActionTokenizer:
    """The ActionTokenizer of a model whose embedding table has `embedding_rows` rows.

    [Contract] the action ids are counted in `cfg.vocab_size` when set (OpenVLA: 32000 of 32064
    rows), else in the model's embedding size, not len(tokenizer): a padded table keeps its padding
    rows out of the text range, and `append` starts after every existing row.
    """
    if embedding_rows < len(tokenizer):
        raise ConfigError("text_tokenizer", f"has {len(tokenizer)} tokens, the model embeds only {embedding_rows}")
    vocab_size = embedding_rows if cfg.vocab_size is None else cfg.vocab_size
    if vocab_size > embedding_rows:
        raise ConfigError("action.vocab_size", f"is {vocab_size}, the model embeds only {embedding_rows} ids")
    if cfg.strategy == "append" and vocab_size != embedding_rows:
        raise ConfigError("action.vocab_size", "'append' adds ids after every existing row; leave it unset")
    normalization = cfg.normalization or ("q01_q99" if statistics is not None else "none")
    if normalization != "none" and statistics is None:
        raise ConfigError("statistics", f"normalization {normalization!r} needs dataset statistics")
    return ActionTokenizer(
        vocab_size=vocab_size,
        num_dims=cfg.num_dims,
        n_bins=cfg.n_bins,
        strategy=cfg.strategy,
        normalization=normalization,
        statistics=statistics if normalization != "none" else None,
        terminate=cfg.terminate,
        token_ids=_token_ids(cfg, vocab_size, tokenizer, corpus),
    )


def fit_embeddings(model: PreTrainedModel, action_tokenizer: ActionTokenizer) -> None:
    """Grow the embeddings and LM head to `total_vocab_size` (the `append` strategy).

    New rows start at the mean and covariance of the old ones (HF's mean_resizing), the
    vocabulary-expansion recipe that keeps a pretrained model's outputs unchanged at first.
    """
    rows = model.get_input_embeddings().num_embeddings
    if action_tokenizer.total_vocab_size > rows:
        model.resize_token_embeddings(action_tokenizer.total_vocab_size, mean_resizing=True)
        text_config = model.config.get_text_config()
        text_config.vocab_size = action_tokenizer.total_vocab_size
        if hasattr(model.config, "vocab_size") and model.config is not text_config:
            model.config.vocab_size = action_tokenizer.total_vocab_size  # PaliGemma keeps a copy
