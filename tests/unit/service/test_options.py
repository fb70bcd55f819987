"""`embedding_api.service.options`: `input_type` (its names, the presets per family and per model, where it stands
in the instruction precedence) and the compact precisions a request may ask."""

from __future__ import annotations

import pytest

from embedding_api.errors import ApiError
from embedding_api.items import item_instruction
from embedding_api.service.options import (
    FAMILY_PRESETS,
    DefaultsError,
    EmbeddingOptions,
    ServerDefaults,
    canonical_input_type,
    input_type_presets,
)
from tests.support.families import QWEN3_TASK


def test_cohere_names_are_aliases() -> None:
    assert [canonical_input_type(name) for name in ("search_query", "search_document", "image", None)] == [
        "query",
        "document",
        "document",
        None,
    ]
    for name in ("query", "document", "classification", "clustering"):
        assert canonical_input_type(name) == name
    with pytest.raises(ApiError) as caught:
        canonical_input_type("Query")
    assert caught.value.param == "input_type" and caught.value.status == 400


def test_the_qwen3_embedding_query_preset_is_the_model_cards_prompt() -> None:
    # devtools/tiny_families.py writes the card's `prompts.query` into config_sentence_transformers.json
    assert FAMILY_PRESETS["qwen3_embedding"]["query"] == QWEN3_TASK


def test_presets_per_model_win_over_the_familys_and_blank_means_the_default() -> None:
    assert input_type_presets("qwen3_vl", True) == {"query": "Retrieve images or text relevant to the user's query."}
    configured = (("query", "Find it"), ("classification", "Classify it"))
    assert input_type_presets("qwen3_embedding", True, configured) == {
        "query": "Find it",
        "classification": "Classify it",
    }
    assert input_type_presets("qwen3_vl", True, (("query", " "),)) == {}  # blank: the model's default
    assert input_type_presets("hidden_state", True) == {}


def test_presets_for_a_model_without_instructions_stop_start_up() -> None:
    assert input_type_presets("siglip", False) == {}
    with pytest.raises(DefaultsError, match="takes no instruction"):
        input_type_presets("siglip", False, (("query", "x"),))


def test_input_type_is_below_every_explicit_instruction() -> None:
    defaults = ServerDefaults(model_dimension=8, presets={"query": "Preset."})
    options = EmbeddingOptions.merged(defaults, input_type="search_query")
    assert (options.input_type, options.preset) == ("query", "Preset.")
    assert item_instruction(None, None, options.preset) == "Preset."
    assert item_instruction(None, "Request.", options.preset) == "Request."
    assert item_instruction("Item.", "Request.", options.preset) == "Item."
    document = EmbeddingOptions.merged(defaults, input_type="document")
    assert item_instruction(None, None, document.preset) is None  # the model's default


def test_precisions_keep_the_compact_ones_once_and_refuse_unknown_ones() -> None:
    defaults = ServerDefaults(model_dimension=8)
    options = EmbeddingOptions.merged(defaults, precisions=["float", "int8", "binary", "int8"])
    assert options.precisions == ("int8", "binary")
    with pytest.raises(ApiError):
        EmbeddingOptions.merged(defaults, precisions=["int4"])
