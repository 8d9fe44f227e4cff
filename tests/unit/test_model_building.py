"""Building Hugging Face models from several threads of one process (`flywheel.common.model_building`).

transformers swaps process-wide attributes while it builds a model; two threads building at once without the lock
left `PreTrainedModel.tie_weights` a no-op for the rest of the process on every try here (4 threads x 3 loads of
the tiny LLM), and every model loaded afterwards had a random head. Under the lock the same load keeps the head
tied. The source check below keeps every build in the project under the lock.
"""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest

from flywheel.common.model_building import model_building

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("libs", "services", "tests", "bench", "examples")
BUILDERS = {"from_pretrained", "from_config", "get_peft_model", "load_adapter", "SentenceTransformer"}
NOT_MODELS = ("Tokenizer", "Config", "Processor")  # AutoTokenizer.from_pretrained and the like build no model
# The bench's plain PEFT peer is a script in its own process with one thread, and knows nothing of Flywheel.
PLAIN_PEERS = {REPO / "bench" / "finetune_peer.py"}


def builds_outside_the_lock(source: str, filename: str = "<source>") -> list[int]:
    """Lines of `source` that build a model outside `with model_building():`. A build is a call of
    `BUILDERS` (on a receiver that is not a tokenizer or config class; not awaited) or of a `*Model`/`*ForCausalLM`
    class imported from transformers."""
    tree = ast.parse(source, filename)
    classes = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and (node.module or "").startswith("transformers") for alias in node.names
               if alias.name.endswith(("Model", "ForCausalLM"))}
    found: list[int] = []

    def is_build(call: ast.Call) -> bool:
        func = call.func
        if isinstance(func, ast.Attribute):
            receiver = ast.unparse(func.value)
            return func.attr in BUILDERS and not any(word in receiver for word in NOT_MODELS)
        return isinstance(func, ast.Name) and (func.id in BUILDERS or func.id in classes)

    def locks(node: ast.With | ast.AsyncWith) -> bool:
        return any(isinstance(item.context_expr, ast.Call) and ast.unparse(item.context_expr.func).endswith(
            "model_building") for item in node.items)

    def visit(node: ast.AST, locked: bool) -> None:
        if isinstance(node, ast.With | ast.AsyncWith) and locks(node):
            locked = True
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and locked:
            locked = False  # a function defined under the lock runs later, outside it
        if isinstance(node, ast.Call) and is_build(node) and not locked and node not in awaited:
            found.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, locked)

    # An awaited `load_adapter` is the engine's own (async) API, which takes the lock on its worker thread.
    awaited = {node.value for node in ast.walk(tree) if isinstance(node, ast.Await)}

    visit(tree, False)
    return sorted(found)


def test_the_check_sees_builds_outside_the_lock() -> None:
    source = '''
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
from flywheel.common.model_building import model_building
tokenizer = AutoTokenizer.from_pretrained(path)
config = AutoConfig.from_pretrained(path)
a = AutoModelForCausalLM.from_pretrained(path)
with model_building():
    b = AutoModelForCausalLM.from_pretrained(path)
    def later():
        return LlamaForCausalLM(config)
c = LlamaForCausalLM(config)
with model_building(), torch.device("meta"):
    d = AutoModelForCausalLM.from_config(config)
e = get_peft_model(d, lora)
f = SentenceTransformer(path)
d.load_adapter(path, adapter_name="x")
async def serve():
    await engine.load_adapter("x", path)
'''
    assert builds_outside_the_lock(source) == [6, 10, 11, 14, 15, 16]


def test_every_model_build_in_the_project_holds_the_lock() -> None:
    files = [p for folder in FOLDERS for p in sorted((REPO / folder).rglob("*.py")) if "__pycache__" not in p.parts
             and p != Path(__file__) and p not in PLAIN_PEERS]
    outside = [f"{path.relative_to(REPO)}:{line}" for path in files
               for line in builds_outside_the_lock(path.read_text(), str(path))]
    assert not outside, f"models built outside `with model_building():` {outside}"


def test_concurrent_loads_under_the_lock_keep_the_head_tied(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, PreTrainedModel

    from flywheel.inference.testing import build_tiny_llm

    directory = build_tiny_llm(tmp_path / "tiny", seed=1)
    original = PreTrainedModel.tie_weights
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def load() -> None:
        try:
            start.wait()
            for _ in range(3):
                with model_building():
                    AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert PreTrainedModel.tie_weights is original
    with model_building():
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
