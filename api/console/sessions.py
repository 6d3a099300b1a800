"""The console's sessions: who is signed in, their CSRF token, and one-time notices.

A session is a random id (``secrets.token_urlsafe``) in an HttpOnly, SameSite=Strict
cookie scoped to ``/console``; what it stands for (the key's owner and role, never the
key) lives in this process's memory, so a restart of the API signs everyone out. Every
visitor gets a session, signed in or not (with keys off there is nobody to sign in), so
every action POST carries the session's CSRF token. Signing in replaces the session
with a fresh one (a session id known before signing in is worth nothing after).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from api.auth import Principal, Role

COOKIE = "plansmith_console"
COOKIE_PATH = "/console"
IDLE_S = 12 * 3600  # a session unused this long is gone
MAX_SESSIONS = 10_000  # the oldest go first beyond this


@dataclass
class Notice:
    kind: str  # "ok" or "error"
    text: str


@dataclass
class Session:
    id: str
    csrf: str
    owner: str | None = None
    role: Role | None = None
    seen: float = field(default_factory=time.monotonic)
    notices: list[Notice] = field(default_factory=list)

    @property
    def signed_in(self) -> bool:
        return self.owner is not None

    def principal(self) -> Principal:
        return Principal(owner=self.owner, role=self.role)

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf.encode(), (token or "").encode())

    def notify(self, kind: str, text: str) -> None:
        self.notices.append(Notice(kind, text[:2000]))
        del self.notices[:-5]

    def take_notices(self) -> list[Notice]:
        out, self.notices = self.notices, []
        return out


class Sessions:
    """The sessions of this API process (bounded; idle ones expire)."""

    def __init__(self, idle_s: float = IDLE_S, max_sessions: int = MAX_SESSIONS):
        self.idle_s = idle_s
        self.max_sessions = max_sessions
        self._by_id: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def new(self, owner: str | None = None, role: Role | None = None) -> Session:
        session = Session(
            id=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32), owner=owner, role=role
        )
        with self._lock:
            self._by_id[session.id] = session
            while len(self._by_id) > self.max_sessions:
                self._by_id.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._by_id.get(session_id)
            if session is None:
                return None
            if now - session.seen > self.idle_s:
                del self._by_id[session_id]
                return None
            session.seen = now
            self._by_id.move_to_end(session_id)
            return session

    def drop(self, session_id: str) -> None:
        with self._lock:
            self._by_id.pop(session_id, None)
