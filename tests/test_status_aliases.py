"""One status vocabulary: the Node client's copy of the alias table matches the Python one."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from versioner.v1 import deployment_service_pb2 as pb
from versioner_client.statuses import ALIASES

NODE_CLIENT = Path(__file__).resolve().parents[1] / "clients" / "node" / "src" / "client.js"


def _node_status_words() -> dict[str, list[str]]:
    """STATUS_WORDS from client.js: `NAME: ['word', ...],` lines inside the object literal."""
    source = NODE_CLIENT.read_text()
    block = re.search(r"const STATUS_WORDS = \{(.*?)\};", source, re.S)
    assert block is not None, "STATUS_WORDS not found in the Node client"
    words = {}
    for name, items in re.findall(r"(\w+):\s*(\[[^\]]*\])", block.group(1)):
        words[name] = ast.literal_eval(items)
    return words


def test_node_client_accepts_the_same_status_words_as_python() -> None:
    python = {
        pb.DeploymentStatus.Name(status).removeprefix("DEPLOYMENT_STATUS_"): list(words)
        for status, words in ALIASES.items()
    }
    assert len(python) == 5
    assert _node_status_words() == python
