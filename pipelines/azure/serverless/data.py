"""Steps 1 and 3 of the serverless path: the pipeline's own data steps run locally (prep_data, validate_chat_jsonl),
the files they accept fingerprinted, then registered as uri_file data assets whose version is the fingerprint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipelines.azure.assets import get_or_none
from pipelines.azure.plan import FINGERPRINT_TAG, VERSION_DIGITS, SubmissionError, data_fingerprint
from pipelines.settings import PROJECT_ROOT, RunSettings


@dataclass(frozen=True)
class ValidatedFile:
    split: str  # "train" or "validation"
    path: Path
    fingerprint: str
    records: int
    asset_name: str

    @property
    def version(self) -> str:
        return self.fingerprint[:VERSION_DIGITS]

    @property
    def uri(self) -> str:
        return f"azureml:{self.asset_name}:{self.version}"


@dataclass(frozen=True)
class ValidatedData:
    train: ValidatedFile
    validation: ValidatedFile
    split_info: dict

    @property
    def files(self) -> tuple[ValidatedFile, ValidatedFile]:
        return self.train, self.validation


def build_data_pipeline(settings: RunSettings):
    """prep_data → validate_chat_jsonl (train, and validation against train for leakage): the pipeline's own first
    three steps, wired the same way, without the steps the service replaces."""
    from azure.ai.ml import dsl

    from pipelines.finetune_pipeline import _as_input, check_step_settings, load_components

    components = load_components()
    check_step_settings(settings, components)
    prep_data, validate = components["prep_data"], components["validate_chat_jsonl"]

    @dsl.pipeline(name="chat_data_serverless", description="prep → validate, for serverless fine-tuning")
    def chat_data(raw_data=None):
        splits = prep_data(raw_data=raw_data, **settings.step("prep_data"))
        valid_train = validate(input_data=splits.outputs.train_data, **settings.step("validate_chat_jsonl"))
        valid_validation = validate(
            input_data=splits.outputs.validation_data,
            reference_data=splits.outputs.train_data,  # a validation chat also in train is leakage
            **settings.step("validate_chat_jsonl"),
        )
        return {
            "train_data": valid_train.outputs.valid_data,
            "validation_data": valid_validation.outputs.valid_data,
            "split_info": splits.outputs.split_info,
        }

    return chat_data(raw_data=_as_input(settings.raw_data))


def prepare_data(settings: RunSettings, output_root: Path, quiet: bool = False) -> ValidatedData:
    """Run the data steps with the local backend (reused when nothing changed) and fingerprint what they accepted."""
    from pipelines.local_backend import LocalBackend, LocalRunError

    if not settings.raw_data or settings.raw_data.startswith("azureml:") or "://" in settings.raw_data:
        raise SubmissionError(
            f"{settings.source}: raw_data must be local chat JSONL for the serverless path "
            f"(got {settings.raw_data!r}); the validated files are uploaded from here"
        )
    job = build_data_pipeline(settings)
    backend = LocalBackend(output_root, PROJECT_ROOT, stream_logs=not quiet)
    try:
        result = backend.run(job, settings.experiment_name)
    except LocalRunError as err:
        raise SubmissionError(f"data validation failed: {err}") from None
    files = []
    for split in ("train", "validation"):
        found = sorted(result.outputs[f"{split}_data"].rglob("*.jsonl"))
        if len(found) != 1:
            raise SubmissionError(f"validate_chat_jsonl ({split}) wrote {len(found)} JSONL files; expected one")
        fingerprint, records = data_fingerprint(found[0])
        files.append(ValidatedFile(split, found[0], fingerprint, records, f"{settings.azure.data_asset_name}-{split}"))
    split_info = json.loads((result.outputs["split_info"] / "split_info.json").read_text(encoding="utf-8"))
    return ValidatedData(files[0], files[1], split_info)


def ensure_data_files(ml_client, data: ValidatedData) -> None:
    """Each validated file as a uri_file asset, version = its fingerprint: unchanged data is never uploaded again."""
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Data

    for file in data.files:
        if get_or_none(ml_client.data, file.asset_name, file.version) is not None:
            print(f"  data asset   {file.asset_name}:{file.version} unchanged (already registered)")
            continue
        ml_client.data.create_or_update(
            Data(
                name=file.asset_name,
                version=file.version,
                type=AssetTypes.URI_FILE,
                path=str(file.path),
                description=f"Validated chat JSONL ({file.split}), {file.records} records; version = fingerprint.",
                tags={
                    FINGERPRINT_TAG: file.fingerprint,
                    "records": str(file.records),
                    "source_fingerprint": data.split_info.get("fingerprint", ""),
                },
            )
        )
        print(f"  data asset   {file.asset_name}:{file.version} registered ({file.records} records)")
