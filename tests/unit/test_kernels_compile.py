"""The Triton kernels compile for a real GPU (sm_90, Hopper) on a machine without one, without spills.

The interpreter checks the kernels' maths on CPU; this checks the path a GPU takes: Triton lowers each
kernel with the configuration ``rlvr`` launches it with to PTX, and the ``ptxas`` shipped in the triton
wheel assembles it and reports registers and spills. Runs in a subprocess, as the kernels must be
decorated without ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas-blackwell"
if not PTXAS.exists():
    PTXAS = PTXAS.with_name("ptxas")

SCRIPT = textwrap.dedent('''
    import json, re, subprocess, sys, tempfile
    import torch, triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from rlvr.kernels import logprob_triton as lt

    ptxas, out = sys.argv[1], []
    INT = ("N", "V", "H", "cols_per_split", "n_active", "v_begin", "v_count")
    def signature(kernel, operand, consts):
        sig = {}
        for name in kernel.arg_names:
            if name in consts:
                sig[name] = "constexpr"
            elif name in ("hidden_ptr", "weight_ptr", "dz_ptr"):
                sig[name] = "*" + operand
            elif name in ("targets_ptr", "rows_ptr"):
                sig[name] = "*i64"
            elif name.endswith("_ptr"):
                sig[name] = "*fp32"
            elif name in INT or name.startswith("stride"):
                sig[name] = "i32"
            else:
                sig[name] = "fp32"
        return sig
    for dtype, operand in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        cfg = lt._config(torch.device("cuda"), dtype)
        options = {"num_warps": cfg.pop("num_warps"), "num_stages": cfg.pop("num_stages")}
        for kernel, extra in ((lt._forward_kernel, {}),
                              (lt._dlogits_kernel, {"HAS_GRAD_LOGP": True, "HAS_GRAD_ENTROPY": True})):
            consts = {**cfg, **extra}
            src = ASTSource(fn=kernel, signature=signature(kernel, operand, consts), constexprs=consts)
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                f.write(compiled.asm["ptx"])
            report = subprocess.run([ptxas, "-arch=sm_90a", "-v", f.name, "-o", f.name + ".cubin"],
                                    capture_output=True, text=True)
            spill = re.search(r"(\\d+) bytes spill stores", report.stderr)
            out.append({"kernel": kernel.__name__, "dtype": operand, "rc": report.returncode,
                        "spill": int(spill.group(1)) if spill else None, "log": report.stderr[-400:],
                        "mma": compiled.asm["ptx"].count("wgmma.mma_async") + compiled.asm["ptx"].count("mma.sync")})
    print(json.dumps(out))
''')


@pytest.mark.skipif(not PTXAS.exists(), reason="this triton wheel ships no ptxas")
def test_logprob_kernels_compile_for_hopper_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(PTXAS)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 4
    for r in results:
        name = f"{r['kernel']} ({r['dtype']})"
        assert r["rc"] == 0, f"{name}: ptxas failed: {r['log']}"
        assert r["spill"] == 0, f"{name}: {r['spill']} bytes of register spills: {r['log']}"
        if r["dtype"] == "bf16":
            assert r["mma"] > 0, f"{name}: the logits tile is not computed on tensor cores"
