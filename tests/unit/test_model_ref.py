"""ml.model_ref: the one place `models:/<name>/<version>` is built and parsed."""

from __future__ import annotations

import pytest

from ml.model_ref import ModelRef


def test_uri_and_str_are_the_models_uri() -> None:
    ref = ModelRef("churn", "12")
    assert ref.uri == "models:/churn/12"
    assert str(ref) == "models:/churn/12"
    assert f"serving {ref}" == "serving models:/churn/12"


@pytest.mark.parametrize("ref", [ModelRef("churn", "12"), ModelRef("mlops-classifier.v2", "1")])
def test_parse_round_trips(ref: ModelRef) -> None:
    assert ModelRef.parse(ref.uri) == ref


def test_parse_refuses_an_alias_and_says_so() -> None:
    with pytest.raises(ValueError, match="alias"):
        ModelRef.parse("models:/churn@champion")


@pytest.mark.parametrize(
    "uri",
    ["models:/churn/latest", "models:/churn", "models:/churn/12/extra", "runs:/abc/model", ""],
)
def test_parse_refuses_what_is_not_a_version_uri(uri: str) -> None:
    with pytest.raises(ValueError, match="version number"):
        ModelRef.parse(uri)


@pytest.mark.parametrize(("name", "version"), [("", "1"), ("a/b", "1"), ("a@b", "1")])
def test_a_name_the_uri_cannot_carry_is_refused(name: str, version: str) -> None:
    with pytest.raises(ValueError, match="model name"):
        ModelRef(name, version)


@pytest.mark.parametrize("version", ["", "latest", "-1", "1.0", "champion"])
def test_a_version_must_be_a_number(version: str) -> None:
    with pytest.raises(ValueError, match="version must be a number"):
        ModelRef("churn", version)


def test_is_frozen_and_hashable() -> None:
    ref = ModelRef("churn", "3")
    with pytest.raises(AttributeError):
        ref.version = "4"  # type: ignore[misc]
    assert {ref, ModelRef("churn", "3")} == {ref}


def test_loading_a_version_that_cannot_exist_is_a_user_error_before_any_download() -> None:
    """`mlops` turns RegistryError into one message and exit 2; a bare ValueError would be a
    traceback."""
    from ml.predict import load_version
    from ml.registry import RegistryError

    with pytest.raises(RegistryError, match="version must be a number"):
        load_version("churn", "latest")
