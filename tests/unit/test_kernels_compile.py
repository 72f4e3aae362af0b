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

# The newest ptxas the wheel ships: Triton's PTX version may be past the plain one's.
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas-blackwell"
if not PTXAS.exists():
    PTXAS = PTXAS.with_name("ptxas")

SCRIPT = textwrap.dedent('''
    import json, re, subprocess, sys, tempfile
    import torch, triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from rlvr.kernels import logprob_triton as lt, policy_loss_triton as pl

    ptxas, out = sys.argv[1], []

    def signature(kernel, consts, pointers, ints):
        """Triton types by argument name: ``pointers`` maps names to pointee types (default fp32)."""
        sig = {}
        for name in kernel.arg_names:
            if name in consts:
                sig[name] = "constexpr"
            elif name.endswith("_ptr"):
                sig[name] = "*" + pointers.get(name, "fp32")
            elif name in ints or name.startswith("stride"):
                sig[name] = "i32"
            else:
                sig[name] = "fp32"
        return sig

    def assemble(kernel, consts, options, pointers, ints, label):
        src = ASTSource(fn=kernel, signature=signature(kernel, consts, pointers, ints), constexprs=consts)
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
        ptx = compiled.asm["ptx"]
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(ptx)
        report = subprocess.run([ptxas, "-arch=sm_90a", "-v", f.name, "-o", f.name + ".cubin"],
                                capture_output=True, text=True)
        spill = re.search(r"(\\d+) bytes spill stores", report.stderr)
        out.append({"kernel": f"{kernel.__name__} {label}", "rc": report.returncode,
                    "spill": int(spill.group(1)) if spill else None, "log": report.stderr[-400:],
                    "mma": ptx.count("wgmma.mma_async") + ptx.count("mma.sync")})

    # token_logprobs, with the configurations rlvr launches on CUDA
    for dtype, operand in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        cfg = lt._config(torch.device("cuda"), dtype)
        options = {"num_warps": cfg.pop("num_warps"), "num_stages": cfg.pop("num_stages")}
        pointers = {"hidden_ptr": operand, "weight_ptr": operand, "dz_ptr": operand, "targets_ptr": "i64",
                    "rows_ptr": "i64"}
        ints = ("N", "V", "H", "cols_per_split", "n_active", "v_begin", "v_count")
        assemble(lt._forward_kernel, cfg, options, pointers, ints, operand)
        assemble(lt._dlogits_kernel, {**cfg, "HAS_GRAD_LOGP": True, "HAS_GRAD_ENTROPY": True}, options, pointers,
                 ints, operand)

    # policy_loss: advantages per row and per token, both clip kinds
    cfg = pl._config(torch.device("cuda"))
    options = {"num_warps": cfg["num_warps"]}
    pointers = {"logp_ptr": "bf16", "old_ptr": "bf16", "dlogp_ptr": "bf16", "mask_ptr": "u8", "den_ptr": "u8",
                "stats_ptr": "u8"}
    for per_token in (False, True):
        for dcpo in (False, True):
            consts = dict(ADV_PER_TOKEN=per_token, HAS_DEN=True, HAS_STATS=True, DCPO=dcpo, HAS_CAP=dcpo, DUAL=True,
                          BLOCK_T=cfg["BLOCK_T"], EXP_LIMIT=pl._EXP_LIMIT)
            assemble(pl._forward_kernel, consts, options, pointers, ("N", "T"), str(consts))
    for per_token in (False, True):
        for dcpo in (False, True):
            consts = dict(ADV_PER_TOKEN=per_token, DCPO=dcpo, HAS_CAP=dcpo, DUAL=True, BLOCK_T=cfg["BLOCK_T"],
                          EXP_LIMIT=pl._EXP_LIMIT)
            assemble(pl._backward_kernel, consts, options, pointers, ("N", "T"), str(consts))
    print(json.dumps(out))
''')


@pytest.mark.skipif(not PTXAS.exists(), reason="this triton wheel ships no ptxas")
def test_kernels_compile_for_hopper_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(PTXAS)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 4 + 8  # log-prob kernels (fp32, bf16) + policy_loss forward and backward, 4 each
    for r in results:
        assert r["rc"] == 0, f"{r['kernel']}: ptxas failed: {r['log']}"
        assert r["spill"] == 0, f"{r['kernel']}: {r['spill']} bytes of register spills: {r['log']}"
        if "_kernel bf16" in r["kernel"]:
            assert r["mma"] > 0, f"{r['kernel']}: the logits tile is not computed on tensor cores"
