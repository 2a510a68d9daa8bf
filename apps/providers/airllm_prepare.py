"""Turn a GGUF file into the Hugging Face directory AirLLM loads (`manage.py airllm_prepare`).

AirLLM reads safetensors directories, not GGUF files, and there is no hub here to download one from. transformers
reads GGUF files itself (llama, mistral, qwen2 and a few more architectures), dequantising every weight into a
plain model of the architecture the file names; that model's tensors are handed to a fresh one, which is saved.
The whole model is dequantised in memory, in float32 for most files: converting SmolLM2-135M (540 MB of float32)
peaks at 1.3 GB, so plan on twice the float32 size of memory (a 7B model: ~56 GB) and once that of disk.

The directory is made beside DEST under a hidden temporary name and renamed into place only when complete, with
the marker file written last, so an interrupted or failed run never leaves a directory that looks ready.
"""

import contextlib
import io
import json
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MARKER = "timmy-prepared.json"
GGUF_MAGIC = b"GGUF"
STEP_READ = "read GGUF"
STEP_COPY = "copy tensors"
STEP_WRITE = "write"
# Room left over beyond the weights themselves: tokenizer, config, and the file system's own rounding.
SPACE_MARGIN_BYTES = 64 * 1024 * 1024

# (step name, done, total): called as each step starts and after each unit of work in it.
Progress = Callable[[str, int, int], None]


class PrepareError(Exception):
    pass


@dataclass(frozen=True)
class Prepared:
    dest: Path
    architecture: str
    parameters: int
    seconds: float
    size: int


def source_identity(source: Path) -> dict[str, Any]:
    """What the marker records of the GGUF file, to tell whether a prepared directory still matches it."""
    stat = source.stat()
    return {"source": str(source.resolve()), "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns}


def read_marker(dest: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def airllm_prepare(*, source: Path, dest: Path, progress: Progress | None = None, overwrite: bool = False) -> Prepared:
    started = time.monotonic()
    report = progress or _no_progress
    _check_source(source)
    _check_dest(dest, source=source, overwrite=overwrite)

    # torch and transformers take seconds and hundreds of MB to import: the web processes import apps.providers
    # and never convert anything, so only a conversion pays for them.
    import torch
    import transformers
    from accelerate import init_empty_weights
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(source.parent), source.name
    report(STEP_READ, 0, 3)
    with _read_errors(source, transformers.__version__):
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if type(config) not in transformers.MODEL_FOR_CAUSAL_LM_MAPPING:
        raise PrepareError(
            f"{source} holds a {config.model_type} model, which is not a causal language model: AirLLM runs only those"
        )
    report(STEP_READ, 1, 3)
    with _read_errors(source, transformers.__version__):
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    report(STEP_READ, 2, 3)
    # dequantize=True: plain tensors, never GGUF blocks, whatever kernels are installed.
    with _read_errors(source, transformers.__version__), _own_bars_hidden():
        loaded = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, config=config, quantization_config=GgufConfig(dequantize=True)
        )
    report(STEP_READ, 3, 3)

    # A model loaded from GGUF keeps its GGUF quantizer and refuses save_pretrained, and its config says the weights
    # are GGUF-quantized; the copy is a plain model of the same class, built from the clean config without weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=loaded.dtype)
    tensors = loaded.state_dict()
    report(STEP_COPY, 0, len(tensors))
    for done, (key, tensor) in enumerate(tensors.items(), start=1):
        # assign=True hands the dequantised tensor over rather than copying it: one copy of the model in memory.
        model.load_state_dict({key: tensor}, strict=False, assign=True)
        report(STEP_COPY, done, len(tensors))
    del loaded, tensors
    model.tie_weights()
    missing = [key for key, parameter in model.named_parameters() if parameter.is_meta]
    if missing:
        names = ", ".join(missing[:3])
        raise PrepareError(f"{source} lacks {len(missing)} weights that {type(model).__name__} needs ({names}, ...)")
    architecture = type(model).__name__
    parameters = sum(parameter.numel() for parameter in model.parameters())
    needed = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(dest.parent).free
        if free < needed + SPACE_MARGIN_BYTES:
            raise PrepareError(f"not enough disk space in {dest.parent}: needs {_gb(needed)}, {_gb(free)} free")
        building = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    except OSError as exc:
        raise PrepareError(f"cannot write in {dest.parent}: {exc}") from exc
    try:
        report(STEP_WRITE, 0, 3)
        try:
            with _own_bars_hidden():
                model.save_pretrained(building)
            report(STEP_WRITE, 1, 3)
            tokenizer.save_pretrained(building)
            report(STEP_WRITE, 2, 3)
            marker = {
                **source_identity(source),
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "architecture": architecture,
                "parameters": parameters,
                "prepared_at": datetime.now(tz=UTC).isoformat(timespec="seconds"),
            }
            (building / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        except (OSError, SafetensorError) as exc:
            # safetensors reports a failed write (a full disk, a quota) as its own error, not an OSError.
            raise PrepareError(f"cannot write {dest}: {exc}") from exc
        size = sum(path.stat().st_size for path in building.rglob("*") if path.is_file())
        _move_into_place(building, dest)
        report(STEP_WRITE, 3, 3)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return Prepared(
        dest=dest, architecture=architecture, parameters=parameters, seconds=time.monotonic() - started, size=size
    )


def _no_progress(step: str, done: int, total: int) -> None:
    pass


@contextlib.contextmanager
def _read_errors(source: Path, transformers_version: str) -> Iterator[None]:
    """What transformers raises on a GGUF file it cannot read, as the reason."""
    try:
        yield
    except struct.error as exc:
        raise PrepareError(f"{source} is damaged or cut short: {exc}") from exc
    except (ValueError, KeyError, OSError) as exc:
        raise PrepareError(f"transformers {transformers_version} cannot read {source}: {exc}") from exc


@contextlib.contextmanager
def _own_bars_hidden() -> Iterator[None]:
    """transformers draws tqdm bars on sys.stderr while it reads a GGUF file and writes shards, and the GGUF one
    obeys no setting; the caller shows progress its own way (and --no-progress must mean none)."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def _check_source(source: Path) -> None:
    if not source.exists():
        raise PrepareError(f"{source} does not exist")
    if not source.is_file():
        raise PrepareError(f"{source} is not a file: give the path of a .gguf file")
    try:
        with source.open("rb") as file:
            magic = file.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise PrepareError(f"cannot read {source}: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise PrepareError(f"{source} is not a GGUF file (it does not start with the bytes 'GGUF')")


def _check_dest(dest: Path, *, source: Path, overwrite: bool) -> None:
    if dest.exists() and not dest.is_dir():
        raise PrepareError(f"{dest} exists and is not a directory")
    if source.resolve().is_relative_to(dest.resolve()):
        raise PrepareError(f"{source} is inside {dest}: making {dest} would delete it")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise PrepareError(f"{dest} exists and is not empty: choose another directory, or replace it with --overwrite")
    # Found now rather than after minutes of reading: the directory DEST is made in (or its nearest existing parent).
    existing = next(folder for folder in dest.absolute().parents if folder.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PrepareError(f"cannot write in {existing}: permission denied")


def _move_into_place(building: Path, dest: Path) -> None:
    """An empty DEST is replaced by the rename itself; a full one (overwrite) is moved aside first, then deleted."""
    old = None
    try:
        if dest.is_dir() and any(dest.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old / dest.name)
        os.replace(building, dest)
    except OSError as exc:
        if old is not None:
            if not dest.exists():
                os.replace(old / dest.name, dest)
            old.rmdir()
        raise PrepareError(f"cannot move the new directory into {dest}: {exc}") from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB"
