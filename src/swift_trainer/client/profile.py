"""Where the terminal client connects: flags, then the environment, then a profile file.

The profile file lives in the user's config dir (``platformdirs``; on Linux
``~/.config/swift-trainer/profiles.toml``, or ``SWIFT_TRAINER_CONFIG``)::

    default = "lab"

    [profiles.lab]
    url = "http://gpu-box:8000"
    api_key = "..."          # optional; sent as a bearer token
    api_prefix = "/api/v1"   # optional

A person keeps several servers there and picks one with ``--profile`` or
``SWIFT_TRAINER_PROFILE``; a script sets ``SWIFT_TRAINER_URL`` and ``SWIFT_TRAINER_API_KEY``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import msgspec
from platformdirs import user_config_dir

from swift_trainer.core.errors import SwiftTrainerError

DEFAULT_URL: Final = "http://127.0.0.1:8000"
DEFAULT_PREFIX: Final = "/api/v1"


class ProfileError(SwiftTrainerError):
    code = "profile_invalid"


class Connection(msgspec.Struct, frozen=True):
    """A resolved server: its root URL, the API prefix and the key, if any."""

    url: str
    api_prefix: str = DEFAULT_PREFIX
    api_key: str | None = None
    #: Where the settings came from, for error messages: flags, environment, profile NAME.
    source: str = "default"

    @property
    def training_url(self) -> str:
        return self.url.rstrip("/") + "/" + self.api_prefix.strip("/") + "/training"


class _Profile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str
    api_key: str | None = None
    api_prefix: str = DEFAULT_PREFIX


class _ProfileFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    default: str | None = None
    profiles: dict[str, _Profile] = {}


def profile_path(env: Mapping[str, str]) -> Path:
    explicit = env.get("SWIFT_TRAINER_CONFIG")
    if explicit:
        return Path(explicit)
    return Path(user_config_dir("swift-trainer")) / "profiles.toml"


def _read_profiles(path: Path) -> _ProfileFile | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProfileError(f"cannot read the profile file {path}: {exc}") from exc
    try:
        return msgspec.convert(tomllib.loads(raw.decode()), _ProfileFile)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, msgspec.ValidationError) as exc:
        raise ProfileError(f"the profile file {path} is invalid: {exc}") from exc


def resolve_connection(
    env: Mapping[str, str],
    *,
    url: str | None = None,
    api_key: str | None = None,
    profile: str | None = None,
) -> Connection:
    """Flags, then ``--profile``, then the environment, then the file's default profile."""
    path = profile_path(env)
    stored = _read_profiles(path)
    name = profile or env.get("SWIFT_TRAINER_PROFILE") or (stored.default if stored else None)
    resolved = Connection(DEFAULT_URL)
    if name:
        entry = stored.profiles.get(name) if stored is not None else None
        if entry is None:
            raise ProfileError(f"no profile {name!r} in {path}")
        resolved = Connection(entry.url, entry.api_prefix, entry.api_key, f"profile {name}")
    if profile is None:  # a profile named on the command line beats the environment
        if env.get("SWIFT_TRAINER_URL"):
            resolved = msgspec.structs.replace(
                resolved, url=env["SWIFT_TRAINER_URL"], source="environment"
            )
        if env.get("SWIFT_TRAINER_API_KEY"):
            resolved = msgspec.structs.replace(resolved, api_key=env["SWIFT_TRAINER_API_KEY"])
        if env.get("SWIFT_TRAINER_API_PREFIX"):
            resolved = msgspec.structs.replace(resolved, api_prefix=env["SWIFT_TRAINER_API_PREFIX"])
    if url:
        resolved = msgspec.structs.replace(resolved, url=url, source="flags")
    if api_key:
        resolved = msgspec.structs.replace(resolved, api_key=api_key)
    if not resolved.url.startswith(("http://", "https://")):
        raise ProfileError(
            f"server URL {resolved.url!r} (from {resolved.source}) must start with "
            "http:// or https://"
        )
    return resolved


def environment() -> dict[str, str]:
    return dict(os.environ)
