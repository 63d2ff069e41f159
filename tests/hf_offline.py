"""Seed a Hugging Face ``datasets`` cache so that lm-eval's builtin ``gsm8k`` loads offline.

With ``HF_HUB_OFFLINE=1``, ``datasets.load_dataset("openai/gsm8k", "main")`` (datasets 5.x)
never looks at the Hub's file cache: it goes straight to the prepared-dataset cache, which the
``cache`` builder reads from ``$HF_HOME/datasets/openai___gsm8k/main/<version>/<hash>/``:
``dataset_info.json`` (with ``config_name`` "main" and the split sizes) next to one Arrow stream
file per split, named ``gsm8k-<split>.arrow``. We write exactly that from the local jsonl files,
with ``datasets``' own ArrowWriter and DatasetInfo.
"""

from __future__ import annotations

import json
from pathlib import Path

GSM8K_REPO = "openai/gsm8k"
GSM8K_CONFIG = "main"


def offline_env(hf_home: Path) -> dict[str, str]:
    """Environment variables that make ``datasets`` use only ``hf_home``, offline."""
    return {
        "HF_HOME": str(hf_home),
        "HF_DATASETS_CACHE": str(Path(hf_home) / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }


def seed_dataset_cache(
    hf_home: Path, repo_id: str, config_name: str, split_files: dict[str, Path]
) -> Path:
    """Write the prepared-dataset cache for ``repo_id``/``config_name`` from jsonl files
    (``{split: path}``) under ``hf_home``; returns the cache directory written."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    namespace, name = repo_id.split("/")
    target = Path(hf_home) / "datasets" / f"{namespace}___{name}" / config_name / "0.0.0" / "local"
    target.mkdir(parents=True, exist_ok=True)
    splits = datasets.SplitDict(dataset_name=name)
    features = None
    for split, path in split_files.items():
        with open(path, encoding="utf-8") as f:
            table = datasets.Dataset.from_list([json.loads(line) for line in f if line.strip()])
        features = table.features
        with ArrowWriter(features=features, path=str(target / f"{name}-{split}.arrow")) as writer:
            writer.write_table(table.data.table)
            num_examples, num_bytes = writer.finalize()
        splits.add(datasets.SplitInfo(split, num_bytes=num_bytes, num_examples=num_examples,
                                      dataset_name=name))
    datasets.DatasetInfo(
        features=features, builder_name="parquet", dataset_name=name, config_name=config_name,
        version="0.0.0", splits=splits,
    ).write_to_directory(str(target))
    return target


def seed_gsm8k(hf_home: Path, gsm8k_dir: Path) -> Path:
    """Seed ``openai/gsm8k`` config ``main`` (train and test) from ``gsm8k_dir/*.jsonl``."""
    return seed_dataset_cache(
        hf_home, GSM8K_REPO, GSM8K_CONFIG,
        {split: Path(gsm8k_dir) / f"{split}.jsonl" for split in ("train", "test")},
    )
