"""docs/protocol.md must describe exactly the methods the code implements."""

from pathlib import Path

from hivecell.guest.agent import build_dispatcher
from hivecell.protocol.docgen import BEGIN, END, render
from hivecell.protocol.methods import METHODS

DOC = Path(__file__).parents[2] / "docs" / "protocol.md"


def test_generated_reference_is_current() -> None:
    text = DOC.read_text()
    block = text[text.index(BEGIN) : text.index(END) + len(END)]
    fix = "run: uv run python -m hivecell.protocol.docgen --write docs/protocol.md"
    assert block + "\n" == render(), fix


def test_every_contract_method_has_a_handler() -> None:
    # authenticate and cancel are handled by the connection itself, before dispatch
    assert set(build_dispatcher().names) | {"authenticate", "cancel"} == set(METHODS)


def test_agent_tools_are_documented() -> None:
    from hivecell.agent.tools import TOOLS

    text = (DOC.parent / "tools.md").read_text()
    assert all(f"| `{name}` |" in text for name in TOOLS)
