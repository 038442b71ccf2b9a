"""The CPU description every published figure carries."""

from tfx_pipeline.machine import cpu_description


def write_cpuinfo(path, model, flags, cores):
    block = f"processor\t: {{}}\nmodel name\t: {model}\nflags\t\t: {flags}\n\n"
    path.write_text("".join(block.format(i) for i in range(cores)))
    return str(path)


def test_names_model_cores_and_vector_units(tmp_path):
    cpuinfo = write_cpuinfo(tmp_path / "cpuinfo", "AMD EPYC", "fpu sse2 avx avx2 fma avx512f avx512bw", 2)
    assert cpu_description(cpuinfo) == "AMD EPYC, 2 cores, AVX2, AVX-512"


def test_a_cpu_without_avx512_says_so_by_omission(tmp_path):
    cpuinfo = write_cpuinfo(tmp_path / "cpuinfo", "Intel Xeon", "fpu sse2 avx avx2 fma", 4)
    assert cpu_description(cpuinfo) == "Intel Xeon, 4 cores, AVX2"


def test_missing_cpuinfo_still_reports_the_core_count(tmp_path):
    assert cpu_description(str(tmp_path / "absent")).startswith("unknown CPU, ")
