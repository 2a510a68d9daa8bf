"""manage.py airllm_prepare: a GGUF file becomes the Hugging Face directory AirLLM loads.

SmolLM2 is converted once and kept between runs (tests/airllm_model.py); everything else runs on the tiny random
llama GGUF of tests/llm_servers.py, which transformers converts in about a second.
"""

import json
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import gguf
import pytest
import torch
from django.core.management import CommandError, call_command
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from apps.providers.airllm_prepare import MARKER, STEP_COPY, STEP_WRITE, airllm_prepare
from tests.airllm_model import ROOT, airllm_model_dir

CAPITAL = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
TINY_FILES = [
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    MARKER,
    "tokenizer.json",
    "tokenizer_config.json",
]


def prepare(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("airllm_prepare", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def contents(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def gguf_of_architecture(path: Path, architecture: str) -> Path:
    """A GGUF file with metadata only: enough for transformers to say what it thinks of the architecture."""
    writer = gguf.GGUFWriter(path, architecture)
    writer.add_name(f"test-{architecture}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def text_file(folder: Path) -> Path:
    path = folder / "notes.gguf"
    path.write_text("Not a model, whatever its name says.")
    return path


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A folder for DEST, to see that nothing else (a half-made directory) is left beside it."""
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


@pytest.fixture
def old_dest(models: Path) -> Path:
    dest = models / "tiny"
    dest.mkdir()
    (dest / "keep.txt").write_text("the operator's file")
    return dest


@pytest.fixture
def files_cut_at_64k() -> Iterator[None]:
    """A write that grows a file past 64 KB fails (EFBIG), as on a full disk; SIGXFSZ is ignored, as it kills."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_smollm2_prepared_from_the_packaged_gguf_loads_in_transformers_and_answers_paris():
    folder = airllm_model_dir()
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    inputs = tokenizer.apply_chat_template(CAPITAL, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "paris" in answer.lower()
    # Tied embeddings counted once: the 135M of the name.
    assert json.loads((folder / MARKER).read_text())["parameters"] == 134_515_008


def test_the_command_writes_the_directory_with_a_bar_per_step_and_says_what_to_do_next(tiny_gguf, models, capfd):
    dest = models / "tiny"
    out, err = prepare(str(tiny_gguf), str(dest))

    assert re.fullmatch(
        rf"Wrote {re.escape(str(dest))} \(LlamaForCausalLM, 129,600 parameters, 0\.5 MB\) in \d+ s\. "
        rf"Next: set AIRLLM_MODEL_PATH={re.escape(str(dest))} \(or the airllm provider's model in the admin\)\.\n",
        out,
    )
    for bar in (
        "read GGUF: 100%|██████████| 3/3",
        "convert tensors: 100%|██████████| 21/21",
        "write: 100%|██████████| 3/3",
    ):
        assert bar in err
    # transformers' own bars (dequantising, writing shards) are not drawn beside ours.
    assert "Converting" not in capfd.readouterr().err
    assert sorted(path.name for path in dest.iterdir()) == TINY_FILES
    assert [path.name for path in models.iterdir()] == ["tiny"]
    marker = json.loads((dest / MARKER).read_text())
    stat = tiny_gguf.stat()
    assert (marker["source"], marker["source_size"], marker["source_mtime_ns"]) == (
        str(tiny_gguf.resolve()),
        stat.st_size,
        stat.st_mtime_ns,
    )
    assert (marker["architecture"], marker["parameters"]) == ("LlamaForCausalLM", 129_600)
    # The weights are the file's own (these two are stored unpermuted; this file's output.weight is not tied).
    weights = load_file(dest / "model.safetensors")
    stored = {tensor.name: torch.from_numpy(tensor.data.copy()) for tensor in gguf.GGUFReader(tiny_gguf).tensors}
    assert torch.equal(weights["model.embed_tokens.weight"], stored["token_embd.weight"])
    assert torch.equal(weights["lm_head.weight"], stored["output.weight"])


def test_overwrite_replaces_a_full_dest_and_no_progress_draws_nothing(tiny_gguf, old_dest):
    out, err = prepare(str(tiny_gguf), str(old_dest), "--overwrite", "--no-progress")
    assert out.startswith(f"Wrote {old_dest} ") and err == ""
    assert sorted(path.name for path in old_dest.iterdir()) == TINY_FILES
    assert [path.name for path in old_dest.parent.iterdir()] == ["tiny"]


@pytest.mark.parametrize(
    ("make_source", "reason"),
    [
        (lambda tmp: tmp / "missing.gguf", "missing.gguf does not exist"),
        (lambda tmp: tmp, "is not a file: give the path of a .gguf file"),
        (text_file, "notes.gguf is not a GGUF file (it does not start with the bytes 'GGUF')"),
        (
            lambda tmp: gguf_of_architecture(tmp / "rwkv.gguf", "rwkv6"),
            "cannot read {tmp}/rwkv.gguf: GGUF model with architecture rwkv6 is not supported yet.",
        ),
        (
            lambda tmp: gguf_of_architecture(tmp / "t5.gguf", "t5"),
            "holds a t5 model, which is not a causal language model: AirLLM runs only those",
        ),
    ],
    ids=["missing", "a-directory", "not-gguf", "architecture-transformers-cannot-read", "not-a-causal-lm"],
)
def test_a_source_that_cannot_be_converted_is_refused_with_the_reason(tmp_path, models, make_source, reason):
    source = make_source(tmp_path)
    with pytest.raises(CommandError) as caught:
        prepare(str(source), str(models / "out"))
    assert reason.format(tmp=tmp_path) in str(caught.value)
    assert list(models.iterdir()) == []


def test_a_dest_that_is_not_empty_is_refused_and_left_as_it_was(tiny_gguf, old_dest):
    before = contents(old_dest)
    with pytest.raises(
        CommandError, match="tiny exists and is not empty: choose another directory, or replace it with --overwrite"
    ):
        prepare(str(tiny_gguf), str(old_dest))
    assert contents(old_dest) == before
    assert [path.name for path in old_dest.parent.iterdir()] == ["tiny"]


def test_a_dest_that_is_a_file_is_refused_even_with_overwrite(tiny_gguf, models):
    dest = models / "tiny"
    dest.write_text("a file")
    with pytest.raises(CommandError, match="tiny exists and is not a directory"):
        prepare(str(tiny_gguf), str(dest), "--overwrite")
    assert dest.read_text() == "a file"


def test_overwrite_refuses_a_dest_that_holds_the_source(tiny_gguf, models):
    source = models / "tiny.gguf"
    source.write_bytes(tiny_gguf.read_bytes())
    with pytest.raises(CommandError, match=r"tiny\.gguf is inside .*models: making .*models would delete it"):
        prepare(str(source), str(models), "--overwrite")
    assert source.read_bytes() == tiny_gguf.read_bytes()


def test_a_failed_write_says_why_and_leaves_no_dest(tiny_gguf, models, files_cut_at_64k):
    with pytest.raises(CommandError, match=r"cannot write .*tiny: .*(File too large|FileTooLarge)"):
        prepare(str(tiny_gguf), str(models / "tiny"))
    assert list(models.iterdir()) == []


@pytest.mark.parametrize("at", [(STEP_COPY, 5), (STEP_WRITE, 2)], ids=["copying", "writing"])
def test_an_interrupted_run_leaves_no_dest(tiny_gguf, models, at):
    def interrupt(step: str, done: int, total: int) -> None:
        if (step, done) == at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        airllm_prepare(source=tiny_gguf, dest=models / "tiny", progress=interrupt)
    assert list(models.iterdir()) == []


def test_an_interrupted_overwrite_leaves_the_old_dest_as_it_was(tiny_gguf, old_dest):
    def interrupt(step: str, done: int, total: int) -> None:
        if (step, done) == (STEP_WRITE, 2):
            raise KeyboardInterrupt

    before = contents(old_dest)
    with pytest.raises(KeyboardInterrupt):
        airllm_prepare(source=tiny_gguf, dest=old_dest, progress=interrupt, overwrite=True)
    assert contents(old_dest) == before
    assert [path.name for path in old_dest.parent.iterdir()] == ["tiny"]


def test_the_command_and_its_service_import_no_torch_until_they_convert():
    # The web processes import apps.providers; torch and transformers would cost them seconds and hundreds of MB.
    code = (
        "import sys, django; django.setup(); import apps.providers.management.commands.airllm_prepare; "
        "print(sorted(name for name in ('torch', 'transformers', 'safetensors') if name in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "[]\n"), result.stderr


def test_a_model_larger_than_a_shard_is_written_in_shards_with_an_index_that_loads_the_same_weights(
    tiny_gguf, models, monkeypatch
):
    from apps.providers import airllm_prepare as prepare_module

    whole = models / "whole"
    airllm_prepare(source=tiny_gguf, dest=whole)
    # Tensors are converted one at a time and written a shard at a time: memory holds one shard, not the model.
    monkeypatch.setattr(prepare_module, "SHARD_BYTES", 100_000)
    sharded = models / "sharded"
    airllm_prepare(source=tiny_gguf, dest=sharded)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files[0].startswith("model-00001-of-") and not (sharded / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(sharded).state_dict()
    expected = load_file(whole / "model.safetensors")
    assert set(expected) <= set(loaded) and all(torch.equal(loaded[key], expected[key]) for key in expected)
