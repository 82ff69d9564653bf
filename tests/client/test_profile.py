"""Where the terminal client connects: flags, --profile, the environment, the profile file."""

from __future__ import annotations

from pathlib import Path

import pytest

from swift_trainer.client.profile import ProfileError, resolve_connection


@pytest.fixture
def profiles(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "profiles.toml"
    path.write_text(
        'default = "lab"\n'
        '[profiles.lab]\nurl = "http://lab:8000"\napi_key = "lab-key"\n'
        '[profiles.prod]\nurl = "https://prod"\napi_prefix = "/swift/api/v1"\n',
        encoding="utf-8",
    )
    return {"SWIFT_TRAINER_CONFIG": str(path)}


def test_without_anything_it_is_the_local_default(tmp_path: Path) -> None:
    env = {"SWIFT_TRAINER_CONFIG": str(tmp_path / "absent.toml")}
    connection = resolve_connection(env)
    assert connection.training_url == "http://127.0.0.1:8000/api/v1/training"
    assert connection.api_key is None


def test_the_default_profile_then_the_environment_then_flags(profiles: dict[str, str]) -> None:
    lab = resolve_connection(profiles)
    assert (lab.url, lab.api_key, lab.source) == ("http://lab:8000", "lab-key", "profile lab")
    env = {**profiles, "SWIFT_TRAINER_URL": "http://env:1", "SWIFT_TRAINER_API_KEY": "k2"}
    from_env = resolve_connection(env)
    assert (from_env.url, from_env.api_key, from_env.source) == (
        "http://env:1",
        "k2",
        "environment",
    )
    flags = resolve_connection(env, url="http://flag:2", api_key="k3")
    assert (flags.url, flags.api_key) == ("http://flag:2", "k3")


def test_a_named_profile_beats_the_environment(profiles: dict[str, str]) -> None:
    env = {**profiles, "SWIFT_TRAINER_URL": "http://env:1"}
    prod = resolve_connection(env, profile="prod")
    assert prod.training_url == "https://prod/swift/api/v1/training"
    assert resolve_connection({**profiles, "SWIFT_TRAINER_PROFILE": "prod"}).url == "https://prod"


def test_bad_profiles_are_clear_errors(profiles: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no profile 'nope'"):
        resolve_connection(profiles, profile="nope")
    broken = tmp_path / "broken.toml"
    broken.write_text('[profiles.x]\nurl = "http://x"\ncolour = "red"\n', encoding="utf-8")
    with pytest.raises(ProfileError, match="is invalid"):
        resolve_connection({"SWIFT_TRAINER_CONFIG": str(broken)}, profile="x")
    with pytest.raises(ProfileError, match="must start with http"):
        resolve_connection({**profiles, "SWIFT_TRAINER_URL": "ftp://x"})
