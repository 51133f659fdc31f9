"""model_source.find_model_dir: the Hugging Face folder inside what a base_model input mounts."""

from __future__ import annotations

import pytest

from chatft.model_source import ModelNotFoundError, find_model_dir


def test_the_checkpoint_is_found_inside_the_registry_mlflow_layout(tmp_path):
    """azureml://registries/azureml/models/Phi-3-mini-4k-instruct is an mlflow_model: the input mounts the MLflow
    folder (MLmodel, conda.yaml, data/...), and the checkpoint with its weights sits in data/model."""
    root = tmp_path / "mlflow_model_folder"
    (root / "data" / "model").mkdir(parents=True)
    (root / "data" / "tokenizer").mkdir()
    (root / "MLmodel").write_text("flavors:\n  transformers: {}\n")
    (root / "data" / "model" / "config.json").write_text("{}")
    (root / "data" / "model" / "model-00001-of-00002.safetensors").write_bytes(b"")
    (root / "data" / "tokenizer" / "config.json").write_text("{}")  # a config without weights is not a checkpoint
    assert find_model_dir(tmp_path) == root / "data" / "model"
    assert find_model_dir(root / "data" / "model") == root / "data" / "model"


def test_no_or_several_checkpoints_are_refused_by_name(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json with weights"):
        find_model_dir(tmp_path)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        (tmp_path / name / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="several checkpoints found"):
        find_model_dir(tmp_path)
