"""What the CLI keeps between commands, in $FABULA_HOME (default ~/.config/fabula)/session.json.

The file holds the session token and the account's master key, so that later commands need no
password: the master key opens the keystore, and through it every object. It does NOT hold the
password, the authentication key or the key-encryption key, so it cannot log in again, change
the password or delete the account once the token expires or is revoked. The file is created
with mode 0600 in a 0700 directory (written to a temporary file, then renamed over the old one)
and removed by `fabula logout`.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from fabula_wire import ObjectType

SESSION_FILE = "session.json"


def default_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "fabula"


@dataclass
class SavedSession:
    url: str
    username: str
    user_id: str
    token: str
    master_key: bytes = field(repr=False)
    # Highest revision seen per object, so that a replayed older version is noticed across runs.
    revisions: dict[tuple[ObjectType, str], int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"url": self.url, "username": self.username, "user_id": self.user_id, "token": self.token,
                "master_key": base64.b64encode(self.master_key).decode("ascii"),
                "revisions": {f"{type.value}/{id}": revision for (type, id), revision in self.revisions.items()}}

    @classmethod
    def from_json(cls, data: dict) -> SavedSession:
        revisions = {}
        for name, revision in data.get("revisions", {}).items():
            type, _, id = name.partition("/")
            revisions[(ObjectType(type), id)] = int(revision)
        return cls(url=data["url"], username=data["username"], user_id=data["user_id"], token=data["token"],
                   master_key=base64.b64decode(data["master_key"], validate=True), revisions=revisions)


class SessionStore:
    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.path = self.home / SESSION_FILE

    def load(self) -> SavedSession | None:
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return None
        try:
            return SavedSession.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{self.path} is damaged ({error}); remove it and log in again") from None

    def save(self, session: SavedSession) -> None:
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{SESSION_FILE}.{os.getpid()}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                json.dump(session.to_json(), file)
            os.chmod(temporary, 0o600)  # in case the file existed with wider permissions
            os.replace(temporary, self.path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    def delete(self) -> bool:
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True
