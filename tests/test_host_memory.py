import os
import platform
import subprocess
import sys

import pytest

from bert_jax.host_memory import TUNABLES, tuned_environment


def test_tuned_environment_adds_the_tunables_only_when_it_should():
    assert tuned_environment({"PATH": "/bin"}, "glibc") == {"PATH": "/bin", "GLIBC_TUNABLES": TUNABLES}
    assert tuned_environment({}, "") is None  # not glibc (musl, macOS)
    assert tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "glibc") is None
    assert tuned_environment({"BERT_JAX_MALLOC_TUNING": "0"}, "glibc") is None


SCRIPT = """
import os, sys
from bert_jax.host_memory import reexec_with_tuned_malloc
print("run", os.environ.get("GLIBC_TUNABLES", "-"), sys.argv[1:], sys.flags.utf8_mode, flush=True)
reexec_with_tuned_malloc()
"""


def _run(tmp_path, **extra_env):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | extra_env
    result = subprocess.run([sys.executable, "-X", "utf8", str(script), "a", "--b=c"], env=env,
                            capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="re-executes only under glibc")
def test_reexec_keeps_arguments_and_interpreter_options(tmp_path):
    lines = _run(tmp_path)
    assert lines == ["run - ['a', '--b=c'] 1", f"run {TUNABLES} ['a', '--b=c'] 1"]


def test_reexec_can_be_switched_off(tmp_path):
    assert _run(tmp_path, BERT_JAX_MALLOC_TUNING="0") == ["run - ['a', '--b=c'] 1"]
