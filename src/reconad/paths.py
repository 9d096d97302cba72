"""Where each stage reads and writes; ``dvc.yaml`` names the same paths."""

from __future__ import annotations

from pathlib import Path

RAW_DIR = Path("data/raw")
# Outside DVC's outputs: DVC empties ``data/raw`` before re-running fetch, and a
# multi-gigabyte archive must not be downloaded again for a category change.
DOWNLOADS_DIR = Path("data/downloads")
PREPARED_DIR = Path("data/prepared")
MODELS_DIR = Path("models")
# Ensembles sit outside ``models/``: their DVC stages depend on the whole of ``models/``
# (DVC cannot list a variant's members as deps), and a dep may not contain the stage's outs.
ENSEMBLES_DIR = Path("ensembles")
REPORTS_DIR = Path("reports")
EVAL_DIR = REPORTS_DIR / "eval"

SPLIT_FILE = "split.json"
MODEL_SUBDIR = "model"
MODEL_FILE = "model.keras"
MODEL_CONFIG_FILE = "config.json"
THRESHOLD_FILE = "threshold.json"

# Inside an evaluation directory (reports/eval/<variant>/<category>).
EVAL_METRICS_FILE = "metrics.json"
EVAL_CURVES_FILE = "curves.json"
EVAL_SCORES_FILE = "scores.csv"
EVAL_DEFECT_TYPES_FILE = "defect_types.json"
EVAL_RULES_FILE = "rules.json"
EVAL_EXAMPLES_DIR = "examples"


def prepared_category(category: str, root: Path = PREPARED_DIR) -> Path:
    return root / category


def model_dir(variant: str, category: str, root: Path = MODELS_DIR) -> Path:
    """``<root>/<variant>/<category>``: the trained model plus its threshold."""
    return root / variant / category


def eval_dir(variant: str, category: str, root: Path = EVAL_DIR) -> Path:
    return root / variant / category
