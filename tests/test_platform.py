"""The platform module (`bert_jax.backend`): the CPU host's malloc re-exec, which must stay off GPU
and TPU hosts and load no JAX before it runs, and the XLA:CPU options of the steps. The step
variants per platform are traced in tests/test_accelerator_step.py."""

import os
import platform
import subprocess
import sys

import pytest

from bert_jax import backend
from bert_jax.backend import TUNABLES, tuned_environment


def test_tuned_environment_adds_the_tunables_only_when_it_should():
    assert tuned_environment({"PATH": "/bin"}, "glibc") == {"PATH": "/bin", "GLIBC_TUNABLES": TUNABLES}
    assert tuned_environment({}, "") is None  # not glibc (musl, macOS)
    assert tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "glibc") is None
    assert tuned_environment({"BERT_JAX_MALLOC_TUNING": "0"}, "glibc") is None


def test_malloc_reexec_only_on_cpu_hosts(tmp_path):
    assert backend.cpu_host({"JAX_PLATFORMS": "cpu"}) and backend.cpu_host({"JAX_PLATFORMS": "cpu,cuda"})
    assert not backend.cpu_host({"JAX_PLATFORMS": "cuda"}) and not backend.cpu_host({"JAX_PLATFORMS": "tpu,cpu"})
    assert backend.cpu_host({}, device_files=(str(tmp_path / "nvidia[0-9]*"),))
    (tmp_path / "nvidia0").touch()
    assert not backend.cpu_host({}, device_files=(str(tmp_path / "nvidia[0-9]*"),))
    assert backend.tuned_environment({"JAX_PLATFORMS": "cuda"}, "glibc") is None
    assert backend.tuned_environment({"JAX_PLATFORMS": "cpu"}, "glibc")["GLIBC_TUNABLES"] == backend.TUNABLES
    assert not backend.cpu_host({"JAX_PLATFORMS": "rocm"}) and backend.cpu_host({"JAX_PLATFORMS": " cpu , tpu"})


SCRIPT = """
import os, sys
from bert_jax.backend import reexec_with_tuned_malloc
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


def test_cpu_steps_compile_matmuls_outside_ynnpack():
    import jax
    import jax.numpy as jnp
    import numpy as np

    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    options = backend.compiler_options(mesh)
    assert options == backend.CPU_COMPILER_OPTIONS  # this jaxlib accepts them
    a = np.arange(64.0 * 64, dtype=np.float32).reshape(64, 64) / 4096

    def matmul_then_sum(x, y):
        return jnp.tanh(x @ y), jnp.sum(x, axis=0)

    def entry(hlo: str) -> str:  # the top-level instructions; fused ones live in computations above
        return hlo[hlo.index("ENTRY"):]

    default_hlo = jax.jit(matmul_then_sum).lower(a, a).compile().as_text()
    compiled = jax.jit(matmul_then_sum, compiler_options=options).lower(a, a).compile()
    hlo = compiled.as_text()
    assert " dot(" not in entry(default_hlo)  # by default the matmul is inside a YNNPACK fusion
    assert " dot(" in entry(hlo) and "__ynn_fusion" in hlo  # now it is not; the reduction still is
    product, column_sums = compiled(a, a)
    np.testing.assert_allclose(product, np.tanh(a @ a), rtol=1e-5)
    np.testing.assert_allclose(column_sums, a.sum(0), rtol=1e-5)


CLI_SCRIPT = """
import os, sys
from bert_jax import backend, cli  # the platform module must not load JAX: the re-exec comes first
print("run", os.environ.get("GLIBC_TUNABLES", "-"), "jax" in sys.modules, flush=True)
sys.argv = ["bert-jax", "pretrain", "--help"]
cli.main()
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="re-executes only under glibc")
@pytest.mark.parametrize("platforms, reexecuted", [("cpu", True), ("cuda", False), ("tpu", False), ("rocm,cpu", False)])
def test_the_cli_reexecutes_only_where_jax_computes_on_the_cpu(tmp_path, platforms, reexecuted):
    """The CLI's training commands re-execute with the tunables where JAX_PLATFORMS says CPU, and
    run as they are where it names an accelerator; JAX is not loaded before the decision."""
    script = tmp_path / "cli_probe.py"
    script.write_text(CLI_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | {"JAX_PLATFORMS": platforms}
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, check=True)
    runs = [line for line in result.stdout.splitlines() if line.startswith("run ")]
    assert runs == ["run - False"] + ([f"run {TUNABLES} False"] if reexecuted else [])
    assert "usage: bert-jax pretrain" in result.stdout
