"""modelhub: which CPUs compute bf16 natively (injected /proc/cpuinfo text)."""

from searchr1.modelhub import cpu_computes_bf16, resolve_dtype

EPYC_GENOA = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu vme sse2 avx2 avx512f avx512_bf16 avx512_vnni
bugs\t\t: sysret_ss_attrs
"""
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"


def test_cpu_computes_bf16_reads_the_flags_line():
    assert cpu_computes_bf16(EPYC_GENOA)
    assert cpu_computes_bf16(SAPPHIRE_RAPIDS)
    assert not cpu_computes_bf16(SKYLAKE)
    assert not cpu_computes_bf16("")  # no flags line (e.g. an ARM cpuinfo): fp32
    # a flag's name elsewhere in the text (a model name, the bugs line) is not a flag
    assert not cpu_computes_bf16("model name\t: avx512_bf16 lookalike\nflags\t\t: fpu avx2\n")


def test_resolve_dtype_keeps_float32_inference_weights_on_cpu():
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("auto", "cuda:0") == "bfloat16"
    assert resolve_dtype("float16", "cpu") == "float16"
