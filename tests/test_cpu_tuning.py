import os
import platform
import subprocess
import sys

import pytest

from bert_jax.training.cpu_tuning import TUNABLES, tuned_environment


def test_tuned_environment_adds_the_tunables_only_when_it_should():
    assert tuned_environment({"PATH": "/bin"}, "glibc") == {"PATH": "/bin", "GLIBC_TUNABLES": TUNABLES}
    assert tuned_environment({}, "") is None  # not glibc (musl, macOS)
    assert tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "glibc") is None
    assert tuned_environment({"BERT_JAX_MALLOC_TUNING": "0"}, "glibc") is None


SCRIPT = """
import os, sys
from bert_jax.training.cpu_tuning import reexec_with_tuned_malloc
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

    from bert_jax.training import cpu_tuning

    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    options = cpu_tuning.compiler_options(mesh)
    assert options == cpu_tuning.CPU_COMPILER_OPTIONS  # this jaxlib accepts them
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
