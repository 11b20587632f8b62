"""The gpu serving image, built for real (tests/oci.py) on a machine without a GPU: every library the CUDA provider
and cuDNN need resolves except the driver's libcuda.so.1, and it serves on CPU saying why."""
from __future__ import annotations

import httpx
import pytest
from oci import Image, ServingContainer, image_fixture, run

pytestmark = pytest.mark.slow
IMAGE = "localhost/imgcls-serve:gpu"
IMAGE_BUILD = Image("serve-gpu", "Dockerfile.serve", IMAGE, ("VARIANT=gpu",), need_gb=12)
image_store = image_fixture(IMAGE_BUILD)


GPU_LIBRARIES = """
import ctypes, glob, os, subprocess, onnxruntime as ort
ort.preload_dlls()
provider = os.path.join(os.path.dirname(ort.__file__), 'capi', 'libonnxruntime_providers_cuda.so')
try:
    ctypes.CDLL(provider); print('LOADED')
except OSError as exc:
    print('LOAD', exc)
dirs = sorted({os.path.dirname(p) for p in glob.glob('/opt/venv/lib/python3*/site-packages/nvidia/**/lib*.so*',
                                                     recursive=True)})
libs = [provider] + [p for d in dirs for p in glob.glob(d + '/lib*.so*')]
env = dict(os.environ, LD_LIBRARY_PATH=':'.join(dirs))
missing = set()
for lib in libs:
    out = subprocess.run(['ldd', lib], capture_output=True, text=True, env=env).stdout
    missing |= {line.split()[0] for line in out.splitlines() if 'not found' in line}
print('NAMES', ' '.join(sorted(os.path.basename(p) for p in libs)))
print('MISSING', ' '.join(sorted(missing)))
"""


def test_gpu_image_resolves_every_cuda_library_but_the_driver(image_store):
    probe = run(image_store, IMAGE, "-c", GPU_LIBRARIES, entrypoint="python3")
    lines = dict(line.split(" ", 1) for line in probe.stdout.splitlines() if " " in line)
    assert lines.get("MISSING") == "libcuda.so.1", probe.stdout + probe.stderr[-2000:]
    # the provider's own dependencies, once preload_dlls made NVIDIA's wheels findable: only the driver is absent
    assert lines.get("LOAD", "").startswith("libcuda.so.1: cannot open shared object file"), probe.stdout
    for needed in ("libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libcudnn.so.9"):
        assert needed in lines["NAMES"].split(), (needed, lines["NAMES"])
    assert "torch" not in probe.stdout


def test_gpu_image_without_a_gpu_serves_on_cpu_and_says_why(image_store, artifact, data_dir):
    with ServingContainer(image_store, IMAGE, artifact) as box:
        box.predicts(sorted((data_dir / "val" / "ants").iterdir())[0])
        assert 'provider="CPUExecutionProvider"' in httpx.get(box.url + "/metrics").text
    assert "CUDA not used (libcuda.so.1: cannot open shared object file" in box.log, box.log[-3000:]
    assert "serving on CPUExecutionProvider" in box.log and "Traceback" not in box.log, box.log[-3000:]
