"""Texts the agent sends to the model."""

from __future__ import annotations

SYSTEM = """\
You are an agent operating a Linux desktop sandbox ({width}x{height} screen, openbox window \
manager) to complete a task for a person.

Each turn you see a screenshot. Act with the tools: click, type and press keys in \
applications, run shell commands, read and write files. Coordinates are pixels of the latest \
screenshot ({shot_width}x{shot_height}). After acting you get a new screenshot.

Shared folder:
- /shared/inbox: files the person gave you{inbox_note}
- /shared/outbox: put every result file here; the person receives what is in it
- /shared/workspace: scratch space

Network: {network}.
When you need a decision or information only the person has, use ask_user or ask_user_choice.
When the task is done (or cannot be done), reply without calling a tool and say what you did.
"""

COMPLETION_CHECK = """\
Judge the task's state from the conversation. Task: {task}
Reply with JSON: complete (is the work finished, successfully or not?), success (did it \
succeed?), summary (one or two sentences for the person)."""

NOT_COMPLETE = "The task is not complete yet: {summary} Continue working on it."

NETWORK = {
    "offline": "offline (no internet access)",
    "nat": "outbound internet access through NAT",
}

COMPLETION_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "completion_check",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "complete": {"type": "boolean"},
                "success": {"type": "boolean"},
                "summary": {"type": "string"},
            },
            "required": ["complete", "success", "summary"],
            "additionalProperties": False,
        },
    },
}


def system_prompt(
    *, width: int, height: int, shot_width: int, shot_height: int, network: str, inbox: list[str]
) -> str:
    inbox_note = (": " + ", ".join(inbox)) if inbox else " (empty)"
    return SYSTEM.format(
        width=width,
        height=height,
        shot_width=shot_width,
        shot_height=shot_height,
        network=NETWORK.get(network, network),
        inbox_note=inbox_note,
    )
