"""The control channel on a Windows named pipe (platforms.windows.pipe): see agent.control."""
from __future__ import annotations

from agent import protocol
from agent.admission import Admission
from agent.control import REPLY_TIMEOUT_S, ControlCore
from agent.peers import UNKNOWN, Peer, windows_peer


class PipeControlServer(ControlCore):
    """The same channel on a Windows named pipe (platforms.windows.pipe): the pipe's ACL lets
    local users connect, and the client's token decides what they may do."""

    def __init__(self, name: str, engine, log, admission: Admission | None = None, rejections=None,
                 api=None) -> None:
        from platforms.windows.pipe import PipeListener
        self._init_core(engine, log, admission, rejections)
        self.listener = PipeListener(name, api=api)   # raises if another process holds the name

    def serve_forever(self) -> None:
        self.listener.serve(self._accept, self._work)

    def _accept(self, conn) -> bool:
        """In the accept loop, on the client's process token (nothing read yet)."""
        conn.peer = _pipe_peer(conn.client)
        why = self.admit(conn.peer)
        if why is None:
            return True
        conn.reply_and_close(protocol.encode(protocol.error("busy", why)), 0.05)
        return False

    def _work(self, conn) -> None:
        conn.reply_and_close(protocol.encode(self.serve(conn, conn.peer)), REPLY_TIMEOUT_S)

    def authority(self, conn, peer: Peer) -> Peer:
        """The impersonation token, readable now that the request was read; admission's
        process-token identity keeps its account (the slot it holds), never lends privileges."""
        token = _pipe_peer(conn.client_token())
        return token if token.account == peer.account else Peer(peer.pid, peer.account)

    def close(self) -> None:
        self.listener.close()


def _pipe_peer(p) -> Peer:
    return windows_peer(p.pid, p.user_sid, p.sids_in_force) if p is not None else UNKNOWN
