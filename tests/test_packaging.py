"""What a wheel promises: one version, type information, every x86-64 CPU, libgomp bundled.

The disassembly checks read the CMake build directory (the objects a wheel's ``_core`` is linked
from): ``FASTLOSS_BUILD_DIR`` (``os.pathsep``-separated) names it, else every ``build/*`` of this
checkout is checked; without one, or without binutils' ``objdump`` (Linux x86-64 only), they skip.
.ci/run points ``FASTLOSS_BUILD_DIR`` at the build of the wheel it tests, and the build ID check
below proves the module under test was linked there.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import fastloss
from fastloss import _core

PACKAGE_DIR = Path(fastloss.__file__).resolve().parent
TESTS_DIR = Path(__file__).resolve().parent
USER_SCRIPT = TESTS_DIR / "typing" / "use_fastloss.py"

ON_LINUX_X86_64 = sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")


# --- the version lives in python/fastloss/_version.py only ----------------------------------

def test_python_m_fastloss_version_prints_the_version():
    proc = subprocess.run([sys.executable, "-m", "fastloss", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"fastloss {fastloss.__version__}"


def test_one_version_everywhere():
    # CMake gets it from scikit-build-core (SKBUILD_PROJECT_VERSION_FULL), which reads _version.py,
    # as does the distribution's metadata.
    assert _core.build_version == fastloss.__version__
    assert importlib.metadata.version("fastloss") == fastloss.__version__


# --- type information ------------------------------------------------------------------------

def test_type_information_ships():
    assert (PACKAGE_DIR / "py.typed").is_file()
    assert (PACKAGE_DIR / "_core.pyi").is_file()


def test_core_stub_names_every_binding():
    tree = ast.parse((PACKAGE_DIR / "_core.pyi").read_text(encoding="utf-8"))
    stubbed = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    stubbed |= {node.target.id for node in tree.body
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}
    stubbed = {name for name in stubbed if not name.startswith("_")}
    bound = {name for name in dir(_core) if not name.startswith("_")}
    assert stubbed == bound, f"missing from _core.pyi: {bound - stubbed}; stale in it: {stubbed - bound}"


def test_user_script_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(USER_SCRIPT)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every public function called" in proc.stdout


def _is_site_packages(directory: Path) -> bool:
    paths = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    return any(Path(p).resolve() == directory.resolve() for p in paths)


def test_mypy_strict_accepts_a_user_script(tmp_path):
    pytest.importorskip("mypy", reason="mypy is not installed (.ci/run installs it)")
    env = dict(os.environ)
    env.pop("MYPYPATH", None)
    options = ["--strict", "--no-error-summary", "--cache-dir", str(tmp_path / "mypy-cache")]
    if not _is_site_packages(PACKAGE_DIR.parent):
        # An editable or PYTHONPATH install: mypy cannot follow import hooks, so point it at the
        # sources (it refuses site-packages on MYPYPATH, hence only here), and keep their own
        # errors out of this check as it does for an installed package: the user script is checked.
        env["MYPYPATH"] = str(PACKAGE_DIR.parent)
        options.append("--follow-imports=silent")
    proc = subprocess.run([sys.executable, "-m", "mypy", *options, str(USER_SCRIPT)],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- an installed wheel ----------------------------------------------------------------------

def test_imported_from_the_installed_wheel():
    """.ci/run sets FASTLOSS_EXPECT_INSTALLED=1 when it tests a wheel in a fresh venv."""
    print(f"fastloss imported from {fastloss.__file__}")
    if os.environ.get("FASTLOSS_EXPECT_INSTALLED") != "1":
        pytest.skip("FASTLOSS_EXPECT_INSTALLED is not set")
    assert _is_site_packages(PACKAGE_DIR.parent), fastloss.__file__
    assert Path(_core.__file__).resolve().parent == PACKAGE_DIR


def _loaded_libraries() -> list[str]:
    with open("/proc/self/maps", encoding="utf-8") as maps:
        return sorted({line.split()[-1] for line in maps if "/" in line.split()[-1]})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="auditwheel bundles libraries on Linux only")
def test_repaired_wheel_uses_its_own_libgomp():
    libs = PACKAGE_DIR.parent / "fastloss.libs"
    if not libs.is_dir():
        pytest.skip("not an auditwheel-repaired install (no fastloss.libs next to the package)")
    if not _core.openmp:
        pytest.skip("built without OpenMP")
    bundled = sorted(p.name for p in libs.iterdir() if p.name.startswith("libgomp"))
    assert bundled, f"no libgomp in {libs}: {sorted(os.listdir(libs))}"
    gomp = [path for path in _loaded_libraries() if "libgomp" in Path(path).name]
    assert gomp and all(Path(path).resolve().parent == libs.resolve() for path in gomp), gomp


# --- one wheel serves every x86-64 CPU -------------------------------------------------------

def _build_dirs() -> list[Path]:
    named = os.environ.get("FASTLOSS_BUILD_DIR")
    if named:
        return [Path(p) for p in named.split(os.pathsep) if p]
    root = TESTS_DIR.parent / "build"
    return sorted(p for p in root.glob("*") if (p / "CMakeCache.txt").is_file()) if root.is_dir() else []


BUILD_DIRS = _build_dirs()
needs_build = pytest.mark.skipif(
    not (ON_LINUX_X86_64 and BUILD_DIRS and shutil.which("objdump")),
    reason="needs Linux x86-64, binutils' objdump and a CMake build dir (FASTLOSS_BUILD_DIR or build/*)")
build_dir_param = pytest.mark.parametrize("build_dir", BUILD_DIRS or [None],
                                          ids=[p.name for p in BUILD_DIRS] or ["none"])

# VMX instructions begin with "v" too but are not AVX.
_VMX = {"verr", "verw", "vmcall", "vmclear", "vmfunc", "vmlaunch", "vmptrld", "vmptrst", "vmread",
        "vmresume", "vmwrite", "vmxoff", "vmxon"}
# Beyond the x86-64 baseline (SSE2) without a "v": SSE3, SSSE3, SSE4.1/4.2, POPCNT, LZCNT, BMI1/2, MOVBE.
# (Not tzcnt: compilers emit "rep bsf" for ctz, which objdump shows as tzcnt and old CPUs run as bsf.)
_NOT_BASELINE = {
    "addsubpd", "addsubps", "haddpd", "haddps", "hsubpd", "hsubps", "lddqu", "movddup", "movshdup", "movsldup",
    "pabsb", "pabsd", "pabsw", "palignr", "phaddd", "phaddw", "phsubd", "phsubw", "pmaddubsw", "pmulhrsw",
    "pshufb", "psignb", "psignd", "psignw", "blendpd", "blendps", "blendvpd", "blendvps", "dppd", "dpps",
    "extractps", "insertps", "movntdqa", "mpsadbw", "packusdw", "pblendvb", "pblendw", "pcmpeqq", "pextrb",
    "pextrd", "pextrq", "phminposuw", "pinsrb", "pinsrd", "pinsrq", "pmaxsb", "pmaxsd", "pmaxud", "pmaxuw",
    "pminsb", "pminsd", "pminud", "pminuw", "pmovsxbw", "pmovsxdq", "pmovzxbw", "pmovzxdq", "pmuldq",
    "pmulld", "ptest", "roundpd", "roundps", "roundsd", "roundss", "pcmpgtq", "pcmpestri", "pcmpistri",
    "crc32", "popcnt", "lzcnt", "andn", "bextr", "blsi", "blsmsk", "blsr", "bzhi", "mulx", "pdep",
    "pext", "rorx", "sarx", "shlx", "shrx", "movbe",
}


_PREFIXES = {"rep", "repz", "repe", "repnz", "repne", "lock", "notrack", "bnd", "data16"}


def _beyond_baseline(instruction: str) -> bool:
    """True for an AVX/AVX-512 instruction (VEX/EVEX "v" mnemonics, ymm/zmm/mask registers) or
    another one that plain x86-64 lacks."""
    tokens = [token for token in instruction.split() if token not in _PREFIXES]
    mnemonic = tokens[0] if tokens else ""
    if re.search(r"%(ymm|zmm)\d|%k[0-7]\b", instruction):
        return True
    if mnemonic.startswith("v") and mnemonic not in _VMX:
        return True
    if re.match(r"k(add|and|mov|not|or|shift|test|unpck|xnor|xor)", mnemonic):
        return True
    # AT&T may add an operand-size suffix (popcntq, crc32b, movbel).
    return mnemonic in _NOT_BASELINE or (mnemonic[-1:] in ("b", "w", "l", "q") and mnemonic[:-1] in _NOT_BASELINE)


def _disassemble(path: Path) -> dict[str, list[str]]:
    """{function symbol (demangled): instructions} of an object or shared library."""
    out = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", str(path)], capture_output=True,
                         text=True, check=True, timeout=600).stdout
    functions: dict[str, list[str]] = {}
    current = functions.setdefault("?", [])
    for line in out.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            current = functions.setdefault(header.group(1), [])
            continue
        parts = line.split("\t")
        if len(parts) >= 2 and re.match(r"^\s*[0-9a-f]+:$", parts[0]) and parts[1].strip():
            current.append(parts[1].strip().split("#")[0].strip())
    return functions


def _object(build_dir: Path, isa: str) -> Path:
    found = sorted(build_dir.glob(f"**/fastloss_{isa}.dir/**/{isa}.cpp.o"))
    assert found, f"no {isa}.cpp.o under {build_dir}"
    return found[0]


def _offenders(functions: dict[str, list[str]]) -> dict[str, list[str]]:
    return {name: [ins for ins in body if _beyond_baseline(ins)][:5] for name, body in functions.items()
            if any(_beyond_baseline(ins) for ins in body)}


def test_instruction_classifier():
    assert _beyond_baseline("vmovups (%rdi),%ymm0")
    assert _beyond_baseline("vfmadd231ps %ymm1,%ymm2,%ymm0")
    assert _beyond_baseline("vaddsd %xmm1,%xmm0,%xmm0")  # VEX-encoded scalar: AVX all the same
    assert _beyond_baseline("kmovw %k1,%eax")
    assert _beyond_baseline("roundsd $0x4,%xmm1,%xmm0")
    assert _beyond_baseline("popcnt %rdi,%rax")
    for plain in ("movsd (%rdi),%xmm0", "addsd %xmm1,%xmm0", "mulpd %xmm1,%xmm0", "sqrtsd %xmm0,%xmm0",
                  "cvttsd2si %xmm0,%rax", "rep stos %rax,%es:(%rdi)", "xgetbv", "cpuid", "lea 0x8(%rax),%rdx",
                  "movq %xmm0,%rax", "ucomisd %xmm1,%xmm0", "pxor %xmm0,%xmm0", "call 1234 <exp@plt>"):
        assert not _beyond_baseline(plain), plain


@needs_build
@build_dir_param
def test_scalar_object_has_no_avx(build_dir):
    functions = _disassemble(_object(build_dir, "scalar"))
    assert sum(map(len, functions.values())) > 1000, "the scalar object disassembled to almost nothing"
    offenders = _offenders(functions)
    assert not offenders, f"the scalar path uses instructions beyond x86-64: {offenders}"


@needs_build
@build_dir_param
def test_avx2_object_has_ymm_instructions(build_dir):
    """The check above can fail: the same classifier finds AVX in the AVX2 object."""
    functions = _disassemble(_object(build_dir, "avx2"))
    ymm = [ins for body in functions.values() for ins in body if "%ymm" in ins]
    assert len(ymm) > 100
    assert any(ins.startswith("vfmadd") for body in functions.values() for ins in body)
    assert not any("%zmm" in ins for body in functions.values() for ins in body)


@needs_build
@build_dir_param
def test_linked_module_has_no_avx_outside_the_simd_paths(build_dir):
    """In the linked (unstripped) module, only the avx2/avx512 namespaces and their table makers
    use wide instructions: no inline or template code compiled for a wide ISA was merged into
    code every CPU runs (the linker keeps one copy of each inline function)."""
    modules = sorted(build_dir.glob("_core*.so"))
    assert modules, f"no _core*.so in {build_dir}"
    functions = _disassemble(modules[0])
    assert any("::scalar::" in name for name in functions), "the module has no symbols (stripped?)"
    offenders = {name: ins for name, ins in _offenders(functions).items()
                 if not re.search(r"::avx(2|512)::|::avx(2|512)_table\(", name)}
    assert not offenders, f"code outside the SIMD paths uses instructions beyond x86-64: {offenders}"


def _build_id(path: Path) -> str | None:
    if not shutil.which("readelf"):
        return None
    out = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True, timeout=60).stdout
    match = re.search(r"Build ID:\s*([0-9a-f]+)", out)
    return match.group(1) if match else None


@needs_build
def test_checked_build_is_the_installed_module():
    """The objects checked above are the ones the imported ``_core`` was linked from."""
    installed = _build_id(Path(_core.__file__))
    if installed is None:
        pytest.skip("readelf or the module's build ID is missing")
    built = {p: _build_id(m) for p in BUILD_DIRS for m in sorted(p.glob("_core*.so"))[:1]}
    matching = [p for p, build_id in built.items() if build_id == installed]
    if os.environ.get("FASTLOSS_BUILD_DIR"):
        assert matching, f"{_core.__file__} ({installed}) was not linked in FASTLOSS_BUILD_DIR: {built}"
    elif not matching:
        pytest.skip(f"the imported module was not built in any of {[str(p) for p in BUILD_DIRS]}")
