"""Turns ``model.source`` ("default" or a local Hugging Face model directory) into a prepared model."""

from __future__ import annotations

import re
from pathlib import Path

from bastion.config import Settings
from bastion.errors import ConfigError
from bastion.models.default import DEFAULT_NAME, PreparedModel, ensure_default_model

# Pickle-based weight formats execute code on load; bastion never loads them.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_NAME_RE = re.compile(r"[^A-Za-z0-9._:-]+")


def prepare_model(settings: Settings) -> PreparedModel:
    from bastion.digest import digest_dir

    source = settings.model.source
    if source == "default":
        prepared = ensure_default_model(settings.cache_dir)
        name = settings.model.served_name or DEFAULT_NAME
        return PreparedModel(name, prepared.path, prepared.digest)
    path = Path(source).expanduser()
    if not path.is_dir():
        raise ConfigError("model.source: not 'default' and not a local model directory")
    if not (path / "config.json").is_file():
        raise ConfigError("model.source: the directory has no config.json (not a Hugging Face model directory)")
    pickles = sorted(p.name for p in path.rglob("*") if p.suffix.lower() in _PICKLE_SUFFIXES)
    if pickles:
        raise ConfigError(f"model.source: pickle weight files are refused ({', '.join(pickles[:3])}); use safetensors")
    if not any(path.glob("*.safetensors")):
        raise ConfigError("model.source: no *.safetensors weights in the directory")
    name = settings.model.served_name or _NAME_RE.sub("-", path.resolve().name)[:128] or "model"
    resolved = path.resolve()
    return PreparedModel(name, resolved, digest_dir(resolved).digest)
