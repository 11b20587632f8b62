"""The CPU allotment that sets onnxruntime's thread count: cgroup v2 and v1 quota files as the kernel writes them."""
import os
import subprocess
import sys

import pytest

from serving.cpus import cgroup_cpu_quota, cpu_allotment


@pytest.mark.parametrize("files, cpus", [
    ({"cpu.max": "200000 100000\n"}, 2.0),  # v2: 2 CPUs
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),  # v2: no quota
    ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1: no quota
    ({}, None),  # no cgroup files at all
])
def test_quota_from_cgroup_files(tmp_path, files, cpus):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path) == cpus


def _allotment_when_pinned(cpus: int, cgroup_root) -> str:
    """cpu_allotment() in a process pinned to `cpus` CPUs, as a cpuset-limited container is."""
    code = (f"import os; os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:{cpus}]); "
            f"from pathlib import Path; from serving.cpus import cpu_allotment; "
            f"print(cpu_allotment(Path({str(cgroup_root)!r})))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to pin to 1 and 2")
def test_allotment_is_the_smallest_limit(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _allotment_when_pinned(1, tmp_path) == "1"  # the cpuset is the tighter limit
    assert _allotment_when_pinned(2, tmp_path) == "2"  # 1.5 CPUs of quota: 2 threads, never 1 (or 0)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _allotment_when_pinned(1, tmp_path) == "1"  # no quota: the cpuset alone


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to pin to 1")
def test_a_session_pinned_to_one_cpu_runs_one_thread(artifact):
    """A real onnxruntime session in a process pinned to one CPU (as a cpuset-limited container is) takes 1 thread."""
    code = ("import os, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from serving.runtime import OnnxClassifier; "
            "c = OnnxClassifier(sys.argv[1] + '/model.onnx', 2, 64, 'cpu'); print(c.intra_threads)")
    out = subprocess.run([sys.executable, "-c", code, str(artifact)], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "1", out.stderr[-2000:]


def test_onnxruntime_threads_are_shared_out_between_api_workers():
    """intra_op_threads is the server's total: each API worker runs a session of its own on its share (at least 1),
    so two workers on two CPUs run one thread each instead of two each on the same cores."""
    from serving.loading import intra_threads
    from serving.settings import Settings
    assert intra_threads(Settings(api_workers=2, intra_op_threads=4)) == 2
    assert intra_threads(Settings(api_workers=3, intra_op_threads=2)) == 1
    assert intra_threads(Settings(api_workers=1, intra_op_threads=3)) == 3
    assert intra_threads(Settings(api_workers=1)) == 0  # serving.runtime then takes the allotment
    assert intra_threads(Settings(api_workers=2)) == max(1, (cpu_allotment() or os.cpu_count()) // 2)


@pytest.mark.parametrize("settings, lanes", [
    ({"intra_op_threads": 2}, 2),  # adaptive (the default) on two threads: a one-thread session for each of 2 lanes
    ({"intra_op_threads": 2, "run_mode": "shared"}, None),  # every run on the one session
    ({"intra_op_threads": 1}, None),  # one thread: nothing to share out
    ({"intra_op_threads": 4, "api_workers": 2}, 2),  # the worker's share of the server's threads
])
def test_adaptive_runs_open_the_chosen_file_again_on_one_thread(artifact, settings, lanes):
    from serving.loading import load
    from serving.settings import Settings
    loaded = load(Settings(model_dir=artifact, device="cpu", precision="fp32", **settings))
    if lanes is None:
        assert loaded.single_thread is None and loaded.lanes == 1
        return
    single = loaded.single_thread.session
    assert loaded.lanes == lanes and loaded.session.intra_threads == lanes
    assert single.get_session_options().intra_op_num_threads == 1
    assert single._model_path == loaded.session.session._model_path == str(loaded.chosen.path)
