"""The console's sessions: who is signed in, their CSRF token, and one-time notices.

A session is a random id (``secrets.token_urlsafe``) in an HttpOnly, SameSite=Lax
cookie scoped to ``/console``; what it stands for (the key's owner and role, never the
key) lives in this process's memory, so a restart of the API signs everyone out. Every
visitor gets a session, signed in or not (with keys off there is nobody to sign in), so
every action POST carries the session's CSRF token. Signing in replaces the session
with a fresh one (a session id known before signing in is worth nothing after).

Signed-in and signed-out sessions are bounded apart: anyone who reaches the console makes
a signed-out session with each cookie-less request, and a flood of them must not push a
signed-in person's session out. A key's owner keeps at most ``MAX_PER_OWNER`` sessions
(their oldest goes first), so a key signing in again and again cannot push out another
owner's sessions either.
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
MAX_SESSIONS = 10_000  # signed in, and signed out, each: the oldest go first beyond this
MAX_PER_OWNER = 20  # signed-in sessions of one key's owner: their oldest goes first


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

    def __init__(
        self,
        idle_s: float = IDLE_S,
        max_sessions: int = MAX_SESSIONS,
        max_per_owner: int = MAX_PER_OWNER,
    ):
        self.idle_s = idle_s
        self.max_sessions = max_sessions
        self.max_per_owner = max_per_owner
        # signed in / signed out, each oldest (least recently used) first
        self._signed_in: OrderedDict[str, Session] = OrderedDict()
        self._signed_out: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def _pool(self, session: Session) -> OrderedDict[str, Session]:
        return self._signed_in if session.signed_in else self._signed_out

    def new(self, owner: str | None = None, role: Role | None = None) -> Session:
        session = Session(
            id=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32), owner=owner, role=role
        )
        with self._lock:
            pool = self._pool(session)
            if owner is not None:
                mine = [k for k, s in pool.items() if s.owner == owner]
                for k in mine[: max(0, len(mine) - self.max_per_owner + 1)]:
                    del pool[k]
            pool[session.id] = session
            while len(pool) > self.max_sessions:
                pool.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        now = time.monotonic()
        with self._lock:
            for pool in (self._signed_in, self._signed_out):
                session = pool.get(session_id)
                if session is None:
                    continue
                if now - session.seen > self.idle_s:
                    del pool[session_id]
                    return None
                session.seen = now
                pool.move_to_end(session_id)
                return session
            return None

    def drop(self, session_id: str) -> None:
        with self._lock:
            self._signed_in.pop(session_id, None)
            self._signed_out.pop(session_id, None)
