"""Launch scripts: dry runs print the exact commands; shellcheck finds nothing."""

import glob
import os
import shutil
import subprocess

import pytest

LAUNCH = os.path.join(os.path.dirname(__file__), "..", "launch")


def _dry_run(script, *args, env=None):
    result = subprocess.run(["bash", os.path.join(LAUNCH, script), *args, "--dry-run"], capture_output=True,
                            text=True, env=dict(os.environ, **(env or {})))
    return result.returncode, result.stdout, result.stderr


def test_tpu_vm_dry_run():
    code, out, _ = _dry_run("tpu_vm.sh", "--name", "b1", "--zone", "us-central2-b", "--project", "p", "--type",
                            "v5litepod-8", "--repo", "https://example.org/bert_jax.git", "--data", "gs://x/data",
                            "--workdir", "gs://x/run", "--config.train.num_steps=10", "all")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 4
    assert lines[0].startswith("gcloud compute tpus tpu-vm create b1 --zone=us-central2-b --project=p "
                               "--accelerator-type=v5litepod-8")
    assert "--worker=all" in lines[1] and "pip\\ install" in lines[1]
    assert "--worker=all" in lines[2] and "gs://x/data" in lines[2] and "--config.train.num_steps=10" in lines[2]
    assert "tail\\ -f" in lines[3]
    code, out, _ = _dry_run("tpu_vm.sh", "--name", "b1", "--zone", "z", "--project", "p", "delete")
    assert code == 0 and out.startswith("gcloud compute tpus tpu-vm delete b1")
    code, _, err = _dry_run("tpu_vm.sh", "--zone", "z", "--project", "p", "install")
    assert code == 2 and "install needs --repo" in err


def test_gpu_dry_runs():
    code, out, _ = _dry_run("gpu_single_node.sh", "--data", "d", "--workdir", "w", "--config.train.seed=3")
    assert code == 0 and "bert-jax pretrain --config base --data d --workdir w" in out
    assert "dtype" not in out and out.strip().endswith("--config.train.seed=3")  # dtype "auto" in the config
    code, out, _ = _dry_run("gpu_multi_node.sh", "--coordinator", "10.0.0.1:1234", "--num-nodes", "4",
                            "--node-rank", "2", "--data", "d", "--workdir", "w")
    assert code == 0 and "JAX_COORDINATOR_ADDRESS=10.0.0.1:1234 JAX_NUM_PROCESSES=4 JAX_PROCESS_ID=2" in out
    code, _, err = _dry_run("gpu_multi_node.sh", "--data", "d", "--workdir", "w")
    assert code == 2 and "--coordinator" in err


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (test extra)")
def test_shellcheck_is_clean():
    result = subprocess.run(["shellcheck", *glob.glob(os.path.join(LAUNCH, "*.sh"))], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
