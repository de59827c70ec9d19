"""The configuration folder in a backup, with every secret taken out.

Secrets never reach a backup: key files (``*.pem``, ``*.key``, ``*.secret`` ...) are skipped,
and in every text file three things are replaced by ``<redacted>``: each secret value the
loaded settings hold (``SecretStr`` fields, passwords inside URLs), the password part of any
``scheme://user:password@`` URL, and the value of any key named like a secret
(``password``, ``token``, ``secret_hash``, ``webhook_url`` ...). The copy records what was
deployed; a restore writes it only when asked, to a folder of the caller's choosing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow.fs as pafs
from pydantic import BaseModel, SecretStr

from churn_core.backup.manifest import BackupError, FileEntry
from churn_core.backup.progress import Reporter
from churn_core.backup.storage import BackupStore, BackupWriter
from churn_core.settings import PACKAGE_CONFIG_DIR

CONFIGS = "configs"
REDACTED = "<redacted>"
SKIPPED_SUFFIXES = frozenset({".pem", ".key", ".secret", ".p12", ".pfx", ".jks", ".keystore"})
TEXT_SUFFIXES = frozenset(
    {".yaml", ".yml", ".json", ".toml", ".ini", ".cfg", ".conf", ".env", ".txt", ".md", ".j2"}
)
# Keys whose value is a secret: the last word of the key decides (token_ttl_s is not one).
_KEY_WORDS = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_?key",
    "webhook_url",
    "private_key",
    "secret_hash",
    "credentials?",
)
_SECRET_KEY = rf"(?:[A-Za-z0-9_.-]*[_.-])?(?:{'|'.join(_KEY_WORDS)})"
_KEY_VALUE = re.compile(
    rf"^(?P<lead>[ \t]*-?[ \t]*[\"']?{_SECRET_KEY}[\"']?[ \t]*[:=][ \t]*)(?P<value>.*?)(?P<comma>,?)[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)
# The same keys inside JSON (or YAML flow mappings) anywhere on a line.
_QUOTED_PAIR = re.compile(
    rf"(?P<lead>\"{_SECRET_KEY}\"[ \t]*:[ \t]*)\"(?P<value>(?:[^\"\\]|\\.)+)\"", re.IGNORECASE
)
_URL_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:@/\s]*:)(?P<pw>[^@/\s]+)(?P<at>@)"
)
_EMPTY_VALUES = frozenset({"", "null", "~", "''", '""', "[]", "{}", "none"})


def config_dir() -> Path:
    """The configuration folder settings are loaded from (``CHURN_CONFIG_DIR`` or the packaged one)."""
    return Path(os.environ.get("CHURN_CONFIG_DIR", PACKAGE_CONFIG_DIR))


def _secret_values(value: Any) -> Iterator[str]:
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        # A URL is secret for its password only (redis://host:6379/0 holds none).
        if "://" in secret:
            yield from _url_password(secret)
        else:
            yield secret
    elif isinstance(value, str):
        yield from _url_password(value)
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secret_values(getattr(value, name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secret_values(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _secret_values(item)


def _url_password(value: str) -> Iterator[str]:
    if "://" not in value:
        return
    try:
        password = urlsplit(value).password
    except ValueError:
        return
    if password:
        yield password
        yield unquote(password)


def known_secrets(settings: BaseModel) -> list[str]:
    """Every secret value in the loaded settings, longest first (so none is replaced in part)."""
    # Very short values would redact ordinary words; no real secret is that short.
    found = {s for s in _secret_values(settings) if len(s) >= 4}
    return sorted(found, key=len, reverse=True)


def _redact_key_value(match: re.Match[str], counter: list[int]) -> str:
    value = match.group("value").split(" #", 1)[0].strip()
    if value.lower() in _EMPTY_VALUES or REDACTED in value or value.startswith("${"):
        return match.group(0)
    counter[0] += 1
    return f'{match.group("lead")}"{REDACTED}"{match.group("comma")}'


def _redact_quoted(match: re.Match[str], counter: list[int]) -> str:
    if match.group("value") == REDACTED:
        return match.group(0)
    counter[0] += 1
    return f'{match.group("lead")}"{REDACTED}"'


def redact_text(text: str, secrets: list[str]) -> tuple[str, int]:
    """``text`` with secrets replaced, and how many replacements were made."""
    count = 0
    for secret in secrets:
        count += text.count(secret)
        text = text.replace(secret, REDACTED)
    text, urls = _URL_PASSWORD.subn(lambda m: f"{m['head']}{REDACTED}{m['at']}", text)
    keys = [0]
    text = _KEY_VALUE.sub(lambda m: _redact_key_value(m, keys), text)
    text = _QUOTED_PAIR.sub(lambda m: _redact_quoted(m, keys), text)
    return text, count + urls + keys[0]


def _config_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.suffix.lower() not in SKIPPED_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def export_configs(folder: Path, writer: BackupWriter, secrets: list[str]) -> tuple[list[str], int]:
    """Copy the configuration folder, redacted; returns the files copied and the redactions."""
    copied: list[str] = []
    redactions = 0
    for path in _config_files(folder):
        relative = path.relative_to(folder).as_posix()
        data = path.read_bytes()
        if path.suffix.lower() in TEXT_SUFFIXES:
            text, count = redact_text(data.decode(errors="replace"), secrets)
            data, redactions = text.encode(), redactions + count
        writer.put_bytes(f"{CONFIGS}/{relative}", data)
        copied.append(relative)
    return copied, redactions


def restore_configs(
    store: BackupStore,
    backup_id: str,
    files: list[FileEntry],
    target: Path,
    *,
    force: bool,
    reporter: Reporter | None = None,
) -> int:
    """Write the backed-up configuration into ``target`` (refused if not empty, unless forced)."""
    if target.exists() and any(target.iterdir()) and not force:
        raise BackupError(f"{target} is not empty: refusing to write configs there without --force")
    local = pafs.LocalFileSystem()
    for file in files:
        destination = target / file.path.removeprefix(f"{CONFIGS}/")
        store.copy_out(backup_id, file, local, str(destination), reporter)
    return len(files)
