"""What a model `source` is: a local file, a local folder or a hub id; one function decides."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference.checkpoints import CHECKPOINT_SUFFIXES, is_hub_id, locate_source
from inference.errors import CheckpointError, HubUnavailableError
from inference.models import classify_source, inspect_model
from inference.types import ModelSpec

DOTTED_IDS = [
    "stabilityai/stable-diffusion-xl-base-1.0",
    "runwayml/stable-diffusion-v1.5",
    "stabilityai/sd-turbo",
    "user_1/model.v2-final",
]


@pytest.fixture
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Relative paths resolve against an empty folder, so nothing exists by accident."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.mark.parametrize("hub_id", DOTTED_IDS)
def test_hub_ids_with_dots_are_hub_ids(hub_id: str, tmp_path: Path, empty_cwd: Path) -> None:
    assert locate_source(hub_id) == hub_id
    assert locate_source(hub_id, tmp_path) == hub_id  # not a path under the config folder
    assert classify_source(hub_id) == ("hub", hub_id)
    assert classify_source(hub_id, tmp_path) == ("hub", hub_id)


@pytest.mark.parametrize("hub_id", DOTTED_IDS)
def test_dotted_hub_id_offline_says_hub_not_missing_file(
    hub_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError) as err:
        inspect_model(ModelSpec(name="m", source=hub_id))
    message = str(err.value)
    assert hub_id in message and "does not exist" not in message


@pytest.mark.parametrize(
    "source",
    [
        "/abs/model",
        "./model",
        "../models/model",
        "~/models/sd",
        "models\\sd15",
        "C:\\models\\sd15",
        "C:/models/sd15",
        "sd15",  # no slash: a folder name, not a hub id
        "a/b/c",  # two slashes
        "org/name/",
        "org/-name",
        "org/name.",
        "org/na..me",
        "org/na--me",
        ".hidden/model",
        "org name/model",
        "models/sd15.safetensors",  # one slash, but a checkpoint file
        "org/model.ckpt",
        "org/model.BIN",
        "x.pth",
        "x.pt",
        "x.sft",
    ],
)
def test_paths_are_paths(source: str, tmp_path: Path, empty_cwd: Path) -> None:
    assert isinstance(locate_source(source), Path)
    assert isinstance(locate_source(source, tmp_path), Path)


def test_relative_paths_resolve_against_base(tmp_path: Path) -> None:
    assert locate_source("models/m.safetensors", tmp_path) == tmp_path / "models/m.safetensors"
    assert locate_source("./m", tmp_path) == tmp_path / "m"
    assert locate_source("/abs/m.safetensors", tmp_path) == Path("/abs/m.safetensors")
    assert locate_source("~/m.safetensors", tmp_path) == Path.home() / "m.safetensors"


def test_an_existing_folder_shaped_like_a_hub_id_is_a_folder(
    tmp_path: Path, empty_cwd: Path
) -> None:
    for root, base in ((empty_cwd, None), (tmp_path, tmp_path)):
        folder = root / "stabilityai" / "stable-diffusion-xl-base-1.0"
        folder.mkdir(parents=True)
        (folder / "model_index.json").write_text("{}")
        expected = folder if base else Path("stabilityai/stable-diffusion-xl-base-1.0")
        assert locate_source("stabilityai/stable-diffusion-xl-base-1.0", base) == expected
        assert classify_source("stabilityai/stable-diffusion-xl-base-1.0", base) == (
            "folder",
            expected,
        )


def test_real_files_and_folders(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model-1.0.safetensors"
    checkpoint.write_bytes(b"")
    odd = tmp_path / "weights.data"  # an existing file is a file, whatever its name
    odd.write_bytes(b"")
    diffusers = tmp_path / "sd-1.5"
    diffusers.mkdir()
    (diffusers / "model_index.json").write_text("{}")
    assert classify_source(str(checkpoint)) == ("single_file", checkpoint)
    assert classify_source(str(odd)) == ("single_file", odd)
    assert classify_source(str(diffusers)) == ("folder", diffusers)
    assert classify_source("sd-1.5", tmp_path) == ("folder", diffusers)
    assert classify_source("model-1.0.safetensors", tmp_path) == ("single_file", checkpoint)
    with pytest.raises(CheckpointError, match=r"model_index\.json"):
        classify_source(str(tmp_path))


@pytest.mark.parametrize("source", ["./x.safetensors", "models/x.safetensors", "x.ckpt"])
def test_missing_checkpoint_file_is_named(source: str, empty_cwd: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        classify_source(source)
    message = str(err.value)
    assert "missing file" in message
    assert str(empty_cwd / Path(source).name) in message or str(empty_cwd / source) in message


def test_missing_folder_is_named(empty_cwd: Path) -> None:
    with pytest.raises(CheckpointError, match="missing folder") as err:
        classify_source("./models/sd15")
    assert str(empty_cwd / "models" / "sd15") in str(err.value)


def test_hub_error_mentions_the_local_path_it_is_not(
    monkeypatch: pytest.MonkeyPatch, empty_cwd: Path
) -> None:
    # A relative folder that does not exist yet is read as a hub id: say so.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match=r"\./models/sd15"):
        inspect_model(ModelSpec(name="m", source="models/sd15"))


def test_offline_hub_error_suggests_the_current_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError) as err:
        inspect_model(ModelSpec(name="m", source="stabilityai/stable-diffusion-xl-base-1.0"))
    message = str(err.value)
    assert "huggingface-cli" not in message
    assert "hf download stabilityai/stable-diffusion-xl-base-1.0 --local-dir " in message


def test_settings_keep_a_dotted_hub_id(tmp_path: Path) -> None:
    from bot.settings import load_settings

    config = tmp_path / "bot.toml"
    config.write_text(
        '[[models]]\nname = "xl"\nsource = "stabilityai/stable-diffusion-xl-base-1.0"\n'
        '[[models]]\nname = "local"\nsource = "models/m.safetensors"\n'
    )
    settings = load_settings(config, {})
    sources = [m.source for m in settings.models]
    assert sources == [
        "stabilityai/stable-diffusion-xl-base-1.0",
        str(tmp_path / "models/m.safetensors"),
    ]


# --- properties --------------------------------------------------------------------------

_PART = st.from_regex(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,20}[A-Za-z0-9_])?", fullmatch=True).filter(
    lambda part: ".." not in part and "--" not in part
)
_HUB_IDS = st.builds(lambda owner, name: f"{owner}/{name}", _PART, _PART).filter(
    lambda text: not text.lower().endswith(tuple(CHECKPOINT_SUFFIXES))
)


@given(_HUB_IDS)
def test_property_every_hub_legal_id_is_a_hub_id(hub_id: str) -> None:
    assert is_hub_id(hub_id)
    assert locate_source(hub_id, Path("/nonexistent-imagine-bot-base")) == hub_id


@given(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30),
    st.sampled_from(sorted(CHECKPOINT_SUFFIXES)),
)
def test_property_a_checkpoint_name_is_always_a_path(stem: str, suffix: str) -> None:
    located = locate_source(stem + suffix, Path("/nonexistent-imagine-bot-base"))
    assert isinstance(located, Path)


@given(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40))
def test_property_total_and_hub_only_when_hub_legal(text: str) -> None:
    located = locate_source(text, Path("/nonexistent-imagine-bot-base"))
    assert isinstance(located, Path | str)
    if isinstance(located, str):
        assert located == text and is_hub_id(text) and text.count("/") == 1
