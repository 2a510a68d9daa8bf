from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from tqdm import tqdm

from apps.providers.airllm_prepare import PrepareError, airllm_prepare

# tqdm's default with its rate left out: the steps' units (files, tensors) differ and "it/s" says nothing.
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]"


class Command(BaseCommand):
    help = (
        "Make the directory AirLLM loads from a GGUF file. AirLLM (the second tier of the cascade) reads Hugging "
        "Face safetensors directories, not GGUF files; this reads SOURCE with transformers (llama, mistral, qwen2 "
        "and the other architectures it reads from GGUF), dequantises it a tensor at a time and writes DEST in "
        "shards of at most 2 GB, so a model larger than memory converts too. DEST takes 4 bytes a parameter of disk "
        "(float32), twice that once AirLLM has split it into layers there on its first load. Afterwards set "
        "AIRLLM_MODEL_PATH=DEST, or DEST as the airllm provider's model in the admin."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("source", type=Path, help="The GGUF file to read.")
        parser.add_argument(
            "dest", type=Path, help="The directory to make; it must not exist or be empty, unless --overwrite."
        )
        parser.add_argument("--overwrite", action="store_true", help="Replace DEST if it already holds files.")
        parser.add_argument("--no-progress", action="store_true", help="Show no progress bars.")

    def handle(self, *args: Any, **options: Any) -> None:
        source: Path = options["source"]
        dest: Path = options["dest"]
        bars = None if options["no_progress"] else Bars(self.stderr)
        try:
            prepared = airllm_prepare(source=source, dest=dest, progress=bars, overwrite=options["overwrite"])
        except PrepareError as exc:
            raise CommandError(str(exc)) from exc
        except KeyboardInterrupt as exc:
            raise CommandError(f"interrupted: {dest} was left as it was") from exc
        finally:
            if bars is not None:
                bars.close()
        self.stdout.write(
            f"Wrote {prepared.dest} ({prepared.architecture}, {_count(prepared.parameters)} parameters, "
            f"{_size(prepared.size)}) in {prepared.seconds:.0f} s. Next: set AIRLLM_MODEL_PATH={prepared.dest} "
            "(or the airllm provider's model in the admin)."
        )


class Bars:
    """One tqdm bar per step of the conversion."""

    def __init__(self, out: OutputWrapper) -> None:
        self.file = BarFile(out)
        self.step = ""
        self.bar: tqdm[Any] | None = None

    def __call__(self, step: str, done: int, total: int) -> None:
        if step != self.step or self.bar is None:
            self.close()
            self.step = step
            self.bar = tqdm(total=total, desc=step, file=self.file, bar_format=BAR_FORMAT)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class BarFile:
    """tqdm redraws a line with "\\r"; Django's OutputWrapper would end every write with a newline, in red."""

    def __init__(self, out: OutputWrapper) -> None:
        self.out = out

    def write(self, text: str) -> None:
        self.out.write(text, style_func=str, ending="")

    def flush(self) -> None:
        self.out.flush()

    def isatty(self) -> bool:
        return self.out.isatty()

    @property
    def encoding(self) -> str:
        return getattr(self.out, "encoding", None) or "utf-8"


def _size(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def _count(parameters: int) -> str:
    if parameters >= 1e9:
        return f"{parameters / 1e9:.1f}B"
    return f"{parameters / 1e6:.0f}M" if parameters >= 1e6 else f"{parameters:,}"
