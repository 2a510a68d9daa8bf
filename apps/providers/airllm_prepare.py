"""Turn a GGUF file into the Hugging Face directory AirLLM loads (`manage.py airllm_prepare`).

AirLLM reads safetensors directories, not GGUF files, and there is no hub here to download one from. transformers
reads GGUF files (llama, mistral, qwen2 and a few more architectures): from it come the config, the tokenizer, the
map from GGUF's tensor names to the architecture's, and the fix-ups some tensors need (llama's permuted q and k).
The tensors themselves are converted one at a time, from the memory-mapped file to float32, and written into
shards of at most SHARD_BYTES, so memory holds the largest tensor and one shard whatever the model's size: the
point of AirLLM is a model larger than memory. SmolLM2-135M: 20 s, peak RSS 1.0 GB with 64 MB shards (most of
it torch and transformers), the same weights as transformers' own whole-model load.

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
STEP_COPY = "convert tensors"
STEP_WRITE = "write"
# Tensors are written as they are converted, into files of at most this size: memory holds one at a time.
SHARD_BYTES = 2 * 1024**3
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
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
    import numpy as np
    import torch
    import transformers
    from accelerate import init_empty_weights
    from gguf import GGUFReader, dequantize
    from safetensors import SafetensorError
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

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
    # The file's metadata and tensor index only: the tensors stay on disk (memory-mapped) until each is converted.
    with _read_errors(source, transformers.__version__), _own_bars_hidden():
        reader = GGUFReader(str(source))
        metadata = gguf_utils.load_gguf_checkpoint(str(source), return_tensors=False)
    report(STEP_READ, 3, 3)

    # The config as the weights will be: plain float32 tensors, not GGUF blocks.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.tie_weights()
    architecture = type(model).__name__
    # What the weights must be: every parameter, a tied one once (named_parameters leaves out the second name).
    expected = {key for key, _ in model.named_parameters()}
    gguf_architecture = str(gguf_utils.read_field(reader, "general.architecture")[0])
    processor = gguf_utils.TENSOR_PROCESSORS.get(gguf_architecture, gguf_utils.TensorProcessor)(
        config=metadata.get("config", {})
    )
    names = gguf_utils.get_gguf_hf_weights_map(model, processor)
    del model
    needed = sum(int(tensor.n_elements) * 4 for tensor in reader.tensors)

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(dest.parent).free
        if free < needed + SPACE_MARGIN_BYTES:
            raise PrepareError(f"not enough disk space in {dest.parent}: needs {_gb(needed)}, {_gb(free)} free")
        building = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    except OSError as exc:
        raise PrepareError(f"cannot write in {dest.parent}: {exc}") from exc
    try:
        try:
            shards = _Shards(building, save_file)
            # What a processor sets aside for later (the experts of a mixture, gathered across tensors) lands here.
            gathered: dict[str, Any] = {"config": metadata.get("config", {}), "tensors": {}}
            report(STEP_COPY, 0, len(reader.tensors))
            for done, tensor in enumerate(reader.tensors, start=1):
                with _read_errors(source, transformers.__version__):
                    result = processor.process(
                        weights=dequantize(tensor.data, tensor.tensor_type),
                        name=tensor.name,
                        tensor_key_mapping=names,
                        parsed_parameters=gathered,
                    )
                if result.name in names:
                    shards.add(names[result.name], torch.from_numpy(np.array(result.weights, dtype=np.float32)))
                for key in list(gathered["tensors"]):
                    shards.add(key, gathered["tensors"].pop(key).to(torch.float32))
                report(STEP_COPY, done, len(reader.tensors))
            del reader
            missing = sorted(expected - shards.written)
            if missing:
                raise PrepareError(
                    f"{source} lacks {len(missing)} weights that {architecture} needs ({', '.join(missing[:3])}, ...)"
                )
            report(STEP_WRITE, 0, 3)
            shards.finish()
            config.architectures = [architecture]
            config.save_pretrained(building)
            with contextlib.suppress(OSError, ValueError):  # a model without generation settings has none to save
                GenerationConfig.from_model_config(config).save_pretrained(building)
            report(STEP_WRITE, 1, 3)
            tokenizer.save_pretrained(building)
            report(STEP_WRITE, 2, 3)
            marker = {
                **source_identity(source),
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "architecture": architecture,
                "parameters": shards.parameters,
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
        dest=dest,
        architecture=architecture,
        parameters=shards.parameters,
        seconds=time.monotonic() - started,
        size=size,
    )


class _Shards:
    """Writes tensors as they come into safetensors files of at most SHARD_BYTES, so that only one shard is ever
    in memory; one file is model.safetensors, several get Hugging Face's shard names and an index."""

    def __init__(self, folder: Path, save_file: Callable[..., None]) -> None:
        self.folder = folder
        self.save_file = save_file
        self.pending: dict[str, Any] = {}
        self.pending_bytes = 0
        self.files: list[tuple[Path, list[str]]] = []
        self.written: set[str] = set()
        self.parameters = 0
        self.total_bytes = 0

    def add(self, key: str, tensor: Any) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > SHARD_BYTES:
            self._flush()
        self.pending[key] = tensor.contiguous()
        self.pending_bytes += size
        self.written.add(key)
        self.parameters += tensor.numel()
        self.total_bytes += size

    def _flush(self) -> None:
        path = self.folder / f"shard-{len(self.files) + 1}.safetensors"
        self.save_file(self.pending, str(path), metadata={"format": "pt"})
        self.files.append((path, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> None:
        if self.pending:
            self._flush()
        if len(self.files) == 1:
            os.replace(self.files[0][0], self.folder / SINGLE_FILE)
            return
        weight_map: dict[str, str] = {}
        count = len(self.files)
        for number, (path, keys) in enumerate(self.files, start=1):
            final = f"model-{number:05d}-of-{count:05d}.safetensors"
            os.replace(path, self.folder / final)
            weight_map.update(dict.fromkeys(keys, final))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


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
