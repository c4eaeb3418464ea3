"""What runs in the agent's place before the agent: a loopback port relayed to a unix socket.

``GATE`` runs on the host's Python with ``-I -S`` (nothing from the agent's environment or
site-packages), so it works in a box that has no hivecell installed. It binds
``127.0.0.1:0`` where the agent runs (in a box that is the box's own network namespace),
fills ``{proxy}`` (``http://127.0.0.1:PORT``) into the variables it was given, forks the
relay and ``exec``s the agent, which keeps the gate's pid, terminal and process group. The
relay leaves the terminal (its own session, stdio on /dev/null) so Ctrl-C and the PTY's end
concern the agent only, and dies with the agent (``PR_SET_PDEATHSIG``; a box's pid namespace
ends it too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PLACEHOLDER = "{proxy}"
# Clients insist on some key; the proxy drops whatever they send and adds the real one.
PLACEHOLDER_KEY = "hivecell-model-proxy"

GATE = r"""
import json, os, socket, sys, threading
sock_dir, templates, command = sys.argv[1], json.loads(sys.argv[2]), sys.argv[4:]
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(64)
proxy = "http://127.0.0.1:%d" % listener.getsockname()[1]
for key, value in templates.items():
    os.environ[key] = value.replace("{proxy}", proxy)
parent = os.getpid()
if os.fork() != 0:
    listener.close()
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        sys.stderr.write("hivecell: cannot start %s: %s\r\n" % (command[0], exc.strerror))
    os._exit(127)
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
except Exception:
    pass
if os.getppid() != parent:
    os._exit(0)
os.setsid()
# Through the folder's descriptor: the path may be longer than a socket address may be.
sock_path = "/proc/self/fd/%d/sock" % os.open(sock_dir, os.O_PATH | os.O_DIRECTORY)
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)

def pump(src, dst):
    # EOF one way closes that way only: a client may half-close and still read its answer.
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

def serve(client):
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(sock_path)
    except OSError:
        body = (b'{"error": {"type": "proxy_unavailable", "message": "the hivecell server '
                b'is not running: start it with hivecell up"}}')
        client.sendall(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                       b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        client.close()
        upstream.close()
        return
    back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
    back.start()
    pump(client, upstream)
    back.join()
    client.close()
    upstream.close()

while True:
    try:
        client, _ = listener.accept()
    except OSError:
        continue
    threading.Thread(target=serve, args=(client,), daemon=True).start()
"""


@dataclass(frozen=True)
class GatePlan:
    """A session's socket folder and the variables its agent gets (``{proxy}`` filled in)."""

    socket_dir: Path
    templates: dict[str, str]

    def wrap(self, python: str, argv: list[str]) -> list[str]:
        """``argv`` started through the gate (``python`` must exist where the agent runs)."""
        args = [str(self.socket_dir), json.dumps(self.templates), "--", *argv]
        return [python, "-I", "-S", "-c", GATE, *args]
