"""The scripted model of the throughput benchmark, as its own process.

Each task says in its description what it is (``[hc-bench KIND N]``): ``ok`` runs a shell
command, takes a screenshot and finishes; ``fail`` does the same and then reports failure;
``cancel`` keeps waiting until the bench cancels it. The script is stateless: the step is
the number of assistant turns in the request, so any number of tasks interleave.

The first request of each task prints ``first N <monotonic seconds>`` (when the request had
been read: the same clock as the bench's ``time.perf_counter``), which is how the bench
tells the tasks' dispatches apart. Requests are not kept: they carry screenshots.

    python -m hivecell.bench.throughput_model
"""

from __future__ import annotations

import json
import re
import signal
import sys
from typing import Any

import anyio

from hivecell.agent.llm.script import Reply, ScriptedToolCall
from hivecell.agent.llm.scripted import ScriptedLLMServer

MARKER = re.compile(r"\[hc-bench (ok|fail|cancel) (-?\d+)\]")  # the warm-up is negative
WAIT = Reply(tool_calls=[ScriptedToolCall(name="wait", arguments={"seconds": 0})], delay_s=0.3)


def marker(kind: str, number: int) -> str:
    return f"[hc-bench {kind} {number}]"


def task_of(request: dict[str, Any]) -> tuple[str, int] | None:
    for message in request.get("messages", []):
        content = message.get("content") if message.get("role") == "user" else None
        if isinstance(content, str) and (found := MARKER.search(content)):
            return found.group(1), int(found.group(2))
    return None


def reply_to(request: dict[str, Any]) -> Reply:
    task = task_of(request)
    if task is None:
        return Reply(text="no [hc-bench KIND N] marker in the task description")
    kind, number = task
    if request.get("response_format"):  # the completion check after the model stopped
        verdict = {"complete": True, "success": kind != "fail", "summary": f"{kind} {number}"}
        return Reply(text=json.dumps(verdict))
    if kind == "cancel":
        return WAIT
    turn = sum(m.get("role") == "assistant" for m in request.get("messages", []))
    if turn == 0:
        command = {"command": f"echo bench {number} && ls /shared"}
        return Reply(tool_calls=[ScriptedToolCall(name="run_shell", arguments=command)])
    if turn == 1:
        return Reply(tool_calls=[ScriptedToolCall(name="screenshot", arguments={})])
    return Reply(text="done")


class _Model:
    def __init__(self) -> None:
        self.started: set[int] = set()
        self.server = ScriptedLLMServer(default=self.step)

    def step(self, request: dict[str, Any]) -> Reply:
        recorded, self.server.requests[:] = self.server.requests[-1], []  # not kept: screenshots
        task = task_of(request)
        if task is not None and task[1] not in self.started:
            self.started.add(task[1])
            print(f"first {task[1]} {recorded.received_at}", flush=True)
        return reply_to(request)


async def _serve() -> None:
    model = _Model()
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with model.server:
            print(model.server.base_url, flush=True)
            async for _ in signals:
                return


def main() -> int:
    anyio.run(_serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
