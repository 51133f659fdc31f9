"""Azure ML environment specs: they load with the SDK, float on nothing, and pin what requirements.txt pins."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "environments").glob("*/environment.yml"))
REQUIREMENTS = ROOT / "requirements.txt"
EXPECTED_NAMES = {"train": "chatft-train", "inference": "chatft-inference", "cpu": "chatft-cpu"}
# inference 2: + azureml-ai-monitoring; 3: + azure-ai-contentsafety and azure-identity (content safety).
EXPECTED_VERSIONS = {"train": "2", "inference": "3", "cpu": "1"}
# A tag after the last "/" component, e.g. ":20260621.v1"; digests ("@sha256:...") are pinned too.
PINNED_IMAGE = re.compile(r"^[\w.-]+(/[\w.-]+)+(:[\w][\w.-]{0,127}|@sha256:[0-9a-f]{64})$")


def _pins(lines: list[str]) -> dict[str, str]:
    """``name==version`` lines as {normalised name: version}; other lines (options, comments) are skipped."""
    pins = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)\s*(#.*)?", line)
        if match:
            pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return pins


def _pip_lines(environment) -> list[str]:
    dependencies = environment.conda_file["dependencies"]
    pip_sections = [d["pip"] for d in dependencies if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "one pip section per conda file"
    return pip_sections[0]


@pytest.fixture(params=SPECS, ids=lambda p: p.parent.name)
def environment(request):
    from azure.ai.ml import load_environment

    return load_environment(source=request.param)


def test_every_expected_environment_exists():
    assert {p.parent.name for p in SPECS} == set(EXPECTED_NAMES)


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.parent.name)
def test_spec_declares_its_schema_on_line_one(spec):
    first = spec.read_text().splitlines()[0]
    assert first == "$schema: https://azuremlschemas.azureedge.net/latest/environment.schema.json"


def test_environment_loads_with_a_name_version_and_pinned_image(environment):
    from azure.ai.ml.entities import Environment

    assert isinstance(environment, Environment)
    folder = Path(environment.base_path).name
    assert environment.name == EXPECTED_NAMES[folder]
    # A changed environment gets a new version (make submit refuses new content under a registered version).
    assert environment.version == EXPECTED_VERSIONS[folder]
    assert PINNED_IMAGE.match(environment.image), environment.image
    assert not environment.image.endswith(":latest")
    assert environment.conda_file, "conda.yml did not load"


def test_python_and_every_pip_package_are_pinned(environment):
    conda = [d for d in environment.conda_file["dependencies"] if isinstance(d, str)]
    assert any(re.fullmatch(r"python=3\.11\.\d+", d) for d in conda), conda
    for line in _pip_lines(environment):
        if line.startswith("--"):  # index options, e.g. the PyTorch CPU wheel index
            continue
        assert re.fullmatch(r"[A-Za-z0-9._-]+==[^\s=<>~!]+", line), f"{environment.name}: {line!r} is not pinned"


def test_pins_match_requirements_txt(environment):
    if not REQUIREMENTS.exists():
        pytest.skip("requirements.txt does not exist yet")
    wanted = _pins(REQUIREMENTS.read_text().splitlines())
    pinned = _pins(_pip_lines(environment))
    # A local build label (torch "2.13.0+cpu") is the same release as "2.13.0".
    mismatched = {
        name: (version, wanted[name])
        for name, version in pinned.items()
        if name in wanted and version.split("+")[0] != wanted[name]
    }
    assert not mismatched, f"{environment.name}: (environment, requirements.txt) differ: {mismatched}"
    assert set(pinned) & set(wanted), "no package shared with requirements.txt"


def test_inference_environment_has_the_serving_stack():
    from azure.ai.ml import load_environment

    environment = load_environment(source=ROOT / "environments" / "inference" / "environment.yml")
    pinned = set(_pins(_pip_lines(environment)))
    assert {"azureml-inference-server-http", "torch", "transformers", "mlflow", "azureml-mlflow"} <= pinned
