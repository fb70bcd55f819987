"""`embedding_api.catalog`: which models are served, from MODELS_CONFIG, MODELS or MODEL_NAME/MODEL_PATH."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from embedding_api.catalog import CatalogError, ModelSpec, model_specs
from embedding_api.settings import Settings


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def test_one_model_by_default() -> None:
    assert model_specs(settings(model_name="m", model_path="models/m")) == [ModelSpec(name="m", path="models/m")]


def test_models_pairs_in_order_with_spaces_allowed() -> None:
    specs = model_specs(settings(models=" a = models/a , b=Qwen/Qwen3-Embedding-0.6B"))
    assert [(spec.name, spec.path) for spec in specs] == [("a", "models/a"), ("b", "Qwen/Qwen3-Embedding-0.6B")]


@pytest.mark.parametrize("value", ["a", "a=", "=models/a", "a=models/a,,b=x"])
def test_a_malformed_pair_names_itself(value: str) -> None:
    with pytest.raises(CatalogError) as caught:
        model_specs(settings(models=value))
    assert str(caught.value).startswith("MODELS: ") and "is not name=path" in str(caught.value)


def test_a_name_given_twice_is_refused() -> None:
    with pytest.raises(CatalogError) as caught:
        model_specs(settings(models="a=x,a=y"))
    assert str(caught.value) == "the model name 'a' is given twice; each served model needs its own name"


def test_toml_gives_per_model_options_and_wins_over_models(tmp_path: Path) -> None:
    config = tmp_path / "models.toml"
    config.write_text(
        """
[[models]]
name = "vl"
path = "models/vl"

[[models]]
name = "enc"
path = "models/enc"
family = "hidden_state"
layer = -3
pooling = "last"
device = "cpu"
max_batch_tokens = 4096
default_instruction = "Find it"
""",
        encoding="utf-8",
    )
    specs = model_specs(settings(models="ignored=x", models_config=str(config)))
    assert specs == [
        ModelSpec(name="vl", path="models/vl"),
        ModelSpec(
            name="enc",
            path="models/enc",
            family="hidden_state",
            layer=-3,
            pooling="last",
            device="cpu",
            max_batch_tokens=4096,
            default_instruction="Find it",
        ),
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[[models]]\nname = 'a'\n", "needs a `name` and a `path`"),
        ("[[models]]\nname = 'a'\npath = 'p'\nlayers = 2\n", "unknown option 'layers'"),
        ("[[models]]\nname = 'a'\npath = 'p'\nfamily = 'bert'\n", "family 'bert' is not one of"),
        ("[[models]]\nname = 'a'\npath = 'p'\npooling = 'max'\n", "pooling must be 'mean' or 'last'"),
        ("title = 'no models'\n", "lists no [[models]] tables"),
        ("[[models]\n", "is not valid TOML"),
    ],
)
def test_toml_mistakes_are_one_sentence_naming_the_file(tmp_path: Path, text: str, fragment: str) -> None:
    config = tmp_path / "models.toml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogError) as caught:
        model_specs(settings(models_config=str(config)))
    assert str(caught.value).startswith(f"MODELS_CONFIG={config}")
    assert fragment in str(caught.value)


def test_a_missing_toml_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as caught:
        model_specs(settings(models_config=str(tmp_path / "nope.toml")))
    assert "cannot be read" in str(caught.value)


def test_toml_gives_a_calibration_file_and_input_type_presets(tmp_path: Path) -> None:
    config = tmp_path / "models.toml"
    config.write_text(
        """
[[models]]
name = "qe"
path = "models/qe"
calibration = "calibration/qe.npy"

[models.input_types]
query = "Find the answer"
clustering = "Group by topic"

[[models]]
name = "vl"
path = "models/vl"
""",
        encoding="utf-8",
    )
    specs = model_specs(settings(models_config=str(config)))
    assert specs[0].calibration == "calibration/qe.npy"
    assert specs[0].input_types == (("clustering", "Group by topic"), ("query", "Find the answer"))
    assert specs[1].calibration is None and specs[1].input_types == ()


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ("[models.input_types]\nsearch = 'x'\n", "input_types: unknown 'search'"),
        ("[models.input_types]\nquery = 3\n", "input_types must be a table of strings"),
        ("input_types = 'query'\n", "input_types must be a table of strings"),
    ],
)
def test_bad_input_types_are_one_sentence(tmp_path: Path, table: str, fragment: str) -> None:
    config = tmp_path / "models.toml"
    config.write_text(f"[[models]]\nname = 'a'\npath = 'p'\n{table}", encoding="utf-8")
    with pytest.raises(CatalogError) as caught:
        model_specs(settings(models_config=str(config)))
    assert str(caught.value).startswith(f"MODELS_CONFIG={config}") and fragment in str(caught.value)
