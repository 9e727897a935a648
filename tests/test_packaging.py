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
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

import fastloss
import pytest
from fastloss import _core

PACKAGE_DIR = Path(fastloss.__file__).resolve().parent
TESTS_DIR = Path(__file__).resolve().parent
USER_SCRIPT = TESTS_DIR / "typing" / "use_fastloss.py"

ON_LINUX_X86_64 = sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")


# --- the version lives in python/fastloss/_version.py only ----------------------------------


def test_python_m_fastloss_version_prints_the_version():
    proc = subprocess.run(
        [sys.executable, "-m", "fastloss", "--version"], capture_output=True, text=True, timeout=120
    )
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
    stubbed |= {
        node.target.id
        for node in tree.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }
    stubbed = {name for name in stubbed if not name.startswith("_")}
    bound = {name for name in dir(_core) if not name.startswith("_")}
    assert stubbed == bound, f"missing from _core.pyi: {bound - stubbed}; stale in it: {stubbed - bound}"


def test_user_script_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(USER_SCRIPT)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
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
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", *options, str(USER_SCRIPT)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
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
    if not root.is_dir():
        return []
    # A sanitizer build (.ci/sanitize.sh) holds the sanitizers' module constructors and runtime
    # calls in every object: not what a wheel ships.
    caches = [(p, p / "CMakeCache.txt") for p in sorted(root.glob("*"))]
    return [p for p, cache in caches if cache.is_file() and not _sanitizer_build(cache.read_text())]


def _sanitizer_build(cmake_cache: str) -> bool:
    match = re.search(r"^FASTLOSS_SANITIZE:[A-Z]*=(.*)$", cmake_cache, re.M)
    return bool(match and match.group(1).strip())


BUILD_DIRS = _build_dirs()
needs_build = pytest.mark.skipif(
    not (ON_LINUX_X86_64 and BUILD_DIRS and shutil.which("objdump")),
    reason="needs Linux x86-64, binutils' objdump and a CMake build dir (FASTLOSS_BUILD_DIR or build/*)",
)
build_dir_param = pytest.mark.parametrize(
    "build_dir", BUILD_DIRS or [None], ids=[p.name for p in BUILD_DIRS] or ["none"]
)

# VMX instructions begin with "v" too but are not AVX.
_VMX = {
    "verr",
    "verw",
    "vmcall",
    "vmclear",
    "vmfunc",
    "vmlaunch",
    "vmptrld",
    "vmptrst",
    "vmread",
    "vmresume",
    "vmwrite",
    "vmxoff",
    "vmxon",
}
# Beyond the x86-64 baseline (SSE2) without a "v": SSE3, SSSE3, SSE4.1/4.2, POPCNT, LZCNT, BMI1/2, MOVBE.
# (Not tzcnt: compilers emit "rep bsf" for ctz, which objdump shows as tzcnt and old CPUs run as bsf.)
_NOT_BASELINE = {
    "addsubpd",
    "addsubps",
    "haddpd",
    "haddps",
    "hsubpd",
    "hsubps",
    "lddqu",
    "movddup",
    "movshdup",
    "movsldup",
    "pabsb",
    "pabsd",
    "pabsw",
    "palignr",
    "phaddd",
    "phaddw",
    "phsubd",
    "phsubw",
    "pmaddubsw",
    "pmulhrsw",
    "pshufb",
    "psignb",
    "psignd",
    "psignw",
    "blendpd",
    "blendps",
    "blendvpd",
    "blendvps",
    "dppd",
    "dpps",
    "extractps",
    "insertps",
    "movntdqa",
    "mpsadbw",
    "packusdw",
    "pblendvb",
    "pblendw",
    "pcmpeqq",
    "pextrb",
    "pextrd",
    "pextrq",
    "phminposuw",
    "pinsrb",
    "pinsrd",
    "pinsrq",
    "pmaxsb",
    "pmaxsd",
    "pmaxud",
    "pmaxuw",
    "pminsb",
    "pminsd",
    "pminud",
    "pminuw",
    "pmovsxbw",
    "pmovsxdq",
    "pmovzxbw",
    "pmovzxdq",
    "pmuldq",
    "pmulld",
    "ptest",
    "roundpd",
    "roundps",
    "roundsd",
    "roundss",
    "pcmpgtq",
    "pcmpestri",
    "pcmpistri",
    "crc32",
    "popcnt",
    "lzcnt",
    "andn",
    "bextr",
    "blsi",
    "blsmsk",
    "blsr",
    "bzhi",
    "mulx",
    "pdep",
    "pext",
    "rorx",
    "sarx",
    "shlx",
    "shrx",
    "movbe",
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
    return mnemonic in _NOT_BASELINE or (
        mnemonic[-1:] in ("b", "w", "l", "q") and mnemonic[:-1] in _NOT_BASELINE
    )


@dataclass
class _Function:
    """One function symbol of an objdump -d listing."""

    name: str  # demangled
    start: int
    end: int  # one past the start of its last instruction
    instructions: list[str] = field(default_factory=list)  # with objdump's "# address <symbol>" notes


def _parse_objdump(listing: str) -> list[_Function]:
    functions: list[_Function] = []
    for line in listing.splitlines():
        header = re.match(r"^([0-9a-f]+) <(.*)>:$", line)
        if header:
            start = int(header.group(1), 16)
            functions.append(_Function(header.group(2), start, start))
            continue
        parts = line.split("\t")
        address = re.match(r"^\s*([0-9a-f]+):$", parts[0])
        if functions and address and len(parts) >= 2 and parts[1].strip():
            functions[-1].instructions.append(parts[1].strip())
            functions[-1].end = int(address.group(1), 16) + 1
    return functions


def _objdump(path: Path) -> list[_Function]:
    out = subprocess.run(
        ["objdump", "-d", "-C", "--no-show-raw-insn", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    return _parse_objdump(out)


def _opcodes(instructions: list[str]) -> list[str]:
    return [ins.split("#")[0].strip() for ins in instructions]


def _disassemble(path: Path) -> dict[str, list[str]]:
    """{function symbol (demangled): instructions} of an object or shared library."""
    functions: dict[str, list[str]] = {}
    for function in _objdump(path):
        functions.setdefault(function.name, []).extend(_opcodes(function.instructions))
    return functions


def _object(build_dir: Path, isa: str) -> Path:
    found = sorted(build_dir.glob(f"**/fastloss_{isa}.dir/**/{isa}.cpp.o"))
    assert found, f"no {isa}.cpp.o under {build_dir}"
    return found[0]


def _offenders(functions: dict[str, list[str]]) -> dict[str, list[str]]:
    return {
        name: [ins for ins in body if _beyond_baseline(ins)][:5]
        for name, body in functions.items()
        if any(_beyond_baseline(ins) for ins in body)
    }


def test_instruction_classifier():
    assert _beyond_baseline("vmovups (%rdi),%ymm0")
    assert _beyond_baseline("vfmadd231ps %ymm1,%ymm2,%ymm0")
    assert _beyond_baseline("vaddsd %xmm1,%xmm0,%xmm0")  # VEX-encoded scalar: AVX all the same
    assert _beyond_baseline("kmovw %k1,%eax")
    assert _beyond_baseline("roundsd $0x4,%xmm1,%xmm0")
    assert _beyond_baseline("popcnt %rdi,%rax")
    for plain in (
        "movsd (%rdi),%xmm0",
        "addsd %xmm1,%xmm0",
        "mulpd %xmm1,%xmm0",
        "sqrtsd %xmm0,%xmm0",
        "cvttsd2si %xmm0,%rax",
        "rep stos %rax,%es:(%rdi)",
        "xgetbv",
        "cpuid",
        "lea 0x8(%rax),%rdx",
        "movq %xmm0,%rax",
        "ucomisd %xmm1,%xmm0",
        "pxor %xmm0,%xmm0",
        "call 1234 <exp@plt>",
    ):
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
    offenders = {
        name: ins
        for name, ins in _offenders(functions).items()
        if not re.search(r"::avx(2|512)::|::avx(2|512)_table\(", name)
    }
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


# --- nothing compiled for a wide ISA runs before the CPU check --------------------------------
#
# Importing fastloss runs the module's static initialisers (.init, .init_array), then
# PyInit__core, whose exec slot runs pybind11_init__core -> init_dispatch -> the cpu checks; a
# kernel runs only through a KernelTable pointer that dispatch handed out after the check said
# yes. So code that may run on a CPU before (or without) that check is everything reachable from
# those entry points through code, and ISA code is allowed only behind a table, which is data.


def _readelf(*args: str) -> str:
    return subprocess.run(
        ["readelf", "-W", *args], capture_output=True, text=True, check=True, timeout=120
    ).stdout


@dataclass
class _Section:
    name: str
    address: int
    size: int
    flags: str  # readelf's letters: A alloc, W write, X execute


def _sections(path: Path) -> dict[int, _Section]:
    """{section index: section}."""
    sections = {}
    for line in _readelf("-S", str(path)).splitlines():
        m = re.match(
            r"^\s*\[\s*(\d+)\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+[0-9a-f]+\s+"
            r"(?:([A-Za-z]+)\s+)?\d+\s+\d+\s+\d+$",
            line,
        )
        if m:
            sections[int(m.group(1))] = _Section(
                m.group(2), int(m.group(3), 16), int(m.group(4), 16), m.group(5) or ""
            )
    assert sections, f"readelf -S listed no sections of {path}"
    return sections


@dataclass
class _Symbol:
    name: str  # mangled
    value: int
    size: int
    kind: str  # FUNC, OBJECT, ...
    section: int | None  # index into _sections(), None when undefined or absolute


def _symbols(path: Path) -> list[_Symbol]:
    symbols = []
    for line in _readelf("-s", str(path)).splitlines():
        m = re.match(r"^\s*\d+:\s+([0-9a-f]+)\s+(\d+)\s+(\w+)\s+\w+\s+\w+\s+(\w+)\s+(\S+)", line)
        if m:
            index = int(m.group(4)) if m.group(4).isdigit() else None
            symbols.append(
                _Symbol(m.group(5).split("@")[0], int(m.group(1), 16), int(m.group(2)), m.group(3), index)
            )
    return symbols


def _relocations(path: Path) -> dict[int, int]:
    """{address of a pointer the dynamic loader fills in: the local address it points to}
    (pointers to symbols defined elsewhere are left out)."""
    targets = {}
    for line in _readelf("-r", str(path)).splitlines():
        relative = re.match(
            r"^([0-9a-f]+)\s+[0-9a-f]+\s+R_X86_64_(?:RELATIVE|IRELATIVE)\s+([0-9a-f]+)$", line
        )
        symbolic = re.match(
            r"^([0-9a-f]+)\s+[0-9a-f]+\s+R_X86_64_(?:64|GLOB_DAT|JUMP_SLOT)\s+([0-9a-f]+)\s+\S+"
            r"\s+\+\s+([0-9a-f]+)$",
            line,
        )
        if relative:
            targets[int(relative.group(1), 16)] = int(relative.group(2), 16)
        elif symbolic and int(symbolic.group(2), 16) != 0:
            targets[int(symbolic.group(1), 16)] = int(symbolic.group(2), 16) + int(symbolic.group(3), 16)
    return targets


def _references(instruction: str) -> list[int]:
    """Addresses an instruction names: a direct call/jump target, and the address objdump notes
    after "#" for a RIP-relative operand (a function whose address is taken, or a GOT slot)."""
    out = []
    branch = re.match(r"^(?:(?:bnd|notrack)\s+)?(?:call|j[a-z]+)\s+([0-9a-f]+) <", instruction)
    if branch:
        out.append(int(branch.group(1), 16))
    note = re.search(r"#\s*([0-9a-f]+) <", instruction)
    if note:
        out.append(int(note.group(1), 16))
    return out


def _reachable(functions: list[_Function], roots: list[int], slots: dict[int, int]) -> list[_Function]:
    """Every function reachable from the ones at `roots` through code: direct calls and jumps
    (also into PLT stubs and .cold parts), function addresses taken in code (callbacks such as
    the module's exec slot), and GOT/PLT slots that the loader points at a function of this
    module (`slots`). Pointers stored in other data are not followed: a call through a kernel
    table is an indirect call whose target only the table (data) knows."""
    ordered = sorted(functions, key=lambda f: f.start)
    starts = [f.start for f in ordered]

    def function_at(address: int) -> _Function | None:
        i = bisect_right(starts, address) - 1
        return ordered[i] if i >= 0 and address < ordered[i].end else None

    seen: dict[int, _Function] = {}
    todo = [f for f in map(function_at, roots) if f is not None]
    while todo:
        function = todo.pop()
        if function.start in seen:
            continue
        seen[function.start] = function
        for instruction in function.instructions:
            for address in _references(instruction):
                target = function_at(address)
                if target is None and address in slots:
                    target = function_at(slots[address])
                if target is not None and target.start not in seen:
                    todo.append(target)
    return sorted(seen.values(), key=lambda f: f.start)


def _module(build_dir: Path) -> Path:
    modules = sorted(build_dir.glob("_core*.so"))
    assert modules, f"no _core*.so in {build_dir}"
    return modules[0]


def _core_objects(build_dir: Path) -> list[Path]:
    """The module's own (non-ISA) objects: the bindings and the dispatcher."""
    found = [sorted(build_dir.glob(f"**/_core.dir/**/{name}.cpp.o")) for name in ("bindings", "dispatch")]
    assert all(found), f"no bindings.cpp.o / dispatch.cpp.o under {build_dir}"
    return [paths[0] for paths in found]


def _isa_objects(build_dir: Path) -> dict[str, Path]:
    found = {p.name.removesuffix(".cpp.o"): p for p in sorted(build_dir.glob("**/fastloss_*.dir/**/*.cpp.o"))}
    assert {"scalar", "avx2", "avx512"} <= set(found), f"ISA objects under {build_dir}: {sorted(found)}"
    return found


def _before_dispatch(module: Path, core_objects: list[Path]) -> tuple[list[_Function], list[_Function]]:
    """(every function of the module, those that can run before the CPU check has said yes).

    Roots: PyInit__core, _init and every .init_array entry (what dlopen runs), and every function
    defined in bindings.cpp.o and dispatch.cpp.o: the cpu checks are called through the dispatcher's
    {table, supported} array (data), and the bound functions are called by Python through
    pybind11's function records (data), so they are roots rather than found by the walk. From the
    roots, _reachable follows code, not data."""
    functions = _objdump(module)
    sections = {s.name: s for s in _sections(module).values()}
    relocations = _relocations(module)

    def within(name: str) -> dict[int, int]:
        section = sections.get(name)
        if section is None:
            return {}
        return {
            at: to for at, to in relocations.items() if section.address <= at < section.address + section.size
        }

    init_array = within(".init_array")
    assert (
        len(init_array) == sections[".init_array"].size // 8 if ".init_array" in sections else not init_array
    )
    slots = {**within(".got"), **within(".got.plt")}
    by_name: dict[str, list[int]] = {}
    for function in functions:
        by_name.setdefault(function.name, []).append(function.start)
    core_names = {f.name for path in core_objects for f in _objdump(path)}
    missing = sorted(name for name in core_names if name not in by_name)
    assert not missing, (
        f"functions of {[p.name for p in core_objects]} not found in {module.name}: {missing[:5]}"
    )
    roots = [*by_name["PyInit__core"], *by_name.get("_init", []), *init_array.values()]
    roots += [start for name in sorted(core_names) for start in by_name[name]]
    return functions, _reachable(functions, roots, slots)


def test_reachability_follows_code_and_the_got_but_not_data():
    """_reachable on a made-up listing: what it must find, and where it must stop."""
    listing = "\n".join(
        [
            "0000000000001000 <root>:",
            "    1000:\tcall   1100 <helper>",
            "    1005:\tlea    0x1f4(%rip),%rax        # 1200 <callback>",
            "    100c:\tmov    0x1fed(%rip),%rdx        # 3000 <table>",
            "    1013:\tcall   *0x8(%rdx)",
            "0000000000001100 <helper>:",
            "    1100:\tjne    1180 <helper.cold>",
            "    1106:\tjmp    1f00 <external@plt>",
            "0000000000001180 <helper.cold>:",
            "    1180:\tud2",
            "0000000000001200 <callback>:",
            "    1200:\tcall   *0x1dfa(%rip)        # 4000 <_GLOBAL_OFFSET_TABLE_+0x18>",
            "0000000000001300 <via_got>:",
            "    1300:\tvmovups (%rdi),%ymm0",
            "0000000000001400 <only_in_the_table>:",
            "    1400:\tvzeroupper",
            "0000000000001f00 <external@plt>:",
            "    1f00:\tjmp    *0x2100(%rip)        # 4008 <_GLOBAL_OFFSET_TABLE_+0x20>",
        ]
    )
    functions = _parse_objdump(listing)
    assert [(f.name, f.start, f.end, len(f.instructions)) for f in functions[:2]] == [
        ("root", 0x1000, 0x1014, 4),
        ("helper", 0x1100, 0x1107, 2),
    ]
    # The GOT slot 0x4000 points at via_got (slot 0x4008 is external); the table at 0x3000 holds
    # only_in_the_table, but the table is data and is not followed.
    reached = _reachable(functions, [0x1000], {0x4000: 0x1300, 0x3010: 0x1400})
    assert [f.name for f in reached] == [
        "root",
        "helper",
        "helper.cold",
        "callback",
        "via_got",
        "external@plt",
    ]
    assert list(_offenders({f.name: _opcodes(f.instructions) for f in reached})) == ["via_got"]
    assert [f.name for f in _reachable(functions, [0x1400], {})] == ["only_in_the_table"]


@needs_build
@build_dir_param
def test_nothing_reachable_before_dispatch_uses_avx(build_dir):
    """Module init, pybind11_init__core, init_dispatch, the cpu checks, the table lookup (inlined
    into init_dispatch) and everything they call run on every CPU, so none of it may use an
    instruction beyond x86-64 or live in an avx2/avx512 namespace."""
    functions, reached = _before_dispatch(_module(build_dir), _core_objects(build_dir))
    names = {f.name for f in reached}
    for needed in (
        "PyInit__core",
        "pybind11_init__core(pybind11::module_&)",
        "fastloss::init_dispatch()",
        "fastloss::(anonymous namespace)::cpu_has_avx2_fma()",
        "fastloss::(anonymous namespace)::cpu_has_avx512()",
        "pybind11_exec__core(_object*)",
    ):
        assert needed in names, f"{needed} is not among the {len(names)} functions reached"
    assert 100 < len(reached) < len(functions), (len(reached), len(functions))
    in_isa_namespaces = sorted(name for name in names if re.search(r"fastloss::avx(2|512)::", name))
    assert not in_isa_namespaces, f"reachable before dispatch: {in_isa_namespaces[:5]}"
    offenders = _offenders({f"{f.name} @ {f.start:#x}": _opcodes(f.instructions) for f in reached})
    assert not offenders, f"code reachable before dispatch uses instructions beyond x86-64: {offenders}"


@needs_build
@build_dir_param
def test_the_avx2_table_leads_to_avx_code(build_dir):
    """The walk above would see it: following the AVX2 table's pointers (which dispatch does only
    after the check) reaches functions that use ymm registers."""
    module = _module(build_dir)
    functions = _objdump(module)
    relocations = _relocations(module)
    table = next((s for s in _symbols(module) if s.name == _table_symbol("avx2")), None)
    assert table is not None, f"no {_table_symbol('avx2')} in {module.name}"
    pointers = [to for at, to in relocations.items() if table.value <= at < table.value + table.size]
    assert len(pointers) >= 20, pointers  # the name, and 2 dtypes x 10 entries of KernelSet
    kernels = [f.name for f in functions if f.start in pointers]
    # 2 dtypes x 10 entries, apply_log serving both
    assert len(kernels) == 19 and all(re.search(r"(^| )fastloss::avx2::", name) for name in kernels), kernels
    reached = _reachable(functions, pointers, {})
    assert _offenders({f.name: _opcodes(f.instructions) for f in reached})
    assert any("%ymm" in ins for f in reached for ins in f.instructions)


# Static initialisers: what a C++ compiler emits for a namespace-scope object that needs code to
# construct (GCC: an _GLOBAL__sub_I_ function listed in .init_array; older ABIs: .ctors).
_INIT_SECTIONS = re.compile(r"^\.(init_array|ctors|preinit_array)\b")


def _static_initialisers(sections: list[str], symbols: list[str]) -> list[str]:
    return [s for s in sections if _INIT_SECTIONS.match(s)] + [
        s for s in symbols if s.startswith(("_GLOBAL__sub_I_", "_GLOBAL__I_"))
    ]


def test_static_initialiser_check_can_fail():
    assert _static_initialisers([".text", ".init_array", ".rela.init_array"], []) == [".init_array"]
    assert _static_initialisers([".ctors.65535"], ["_GLOBAL__sub_I_avx2.cpp"]) == [
        ".ctors.65535",
        "_GLOBAL__sub_I_avx2.cpp",
    ]
    assert _static_initialisers([".text", ".data.rel.ro", ".init"], ["_ZN8fastloss10avx2_tableE"]) == []


@needs_build
@build_dir_param
def test_isa_objects_have_no_static_initialisers(build_dir):
    """Nothing in an ISA object runs at load time: a static initialiser compiled with -mavx512f
    runs on every CPU that imports fastloss."""
    for isa, path in _isa_objects(build_dir).items():
        found = _static_initialisers(
            [s.name for s in _sections(path).values()], [s.name for s in _symbols(path)]
        )
        assert not found, f"{isa}.cpp.o has static initialisers: {found}"


def _is_data(symbol: _Symbol, sections: dict[int, _Section]) -> bool:
    """A defined object in an allocated, non-executable section."""
    if symbol.kind != "OBJECT" or symbol.section is None:
        return False
    flags = sections[symbol.section].flags
    return "A" in flags and "X" not in flags


def _table_symbol(isa: str) -> str:
    return f"_ZN8fastloss{len(isa) + 6}{isa}_tableE"  # fastloss::<isa>_table


@needs_build
@build_dir_param
def test_kernel_tables_are_data(build_dir):
    """Each table is constant data, in its ISA object and in the linked module: no code builds it.
    The same check calls the table's first kernel code (so it can fail)."""
    isa_objects = _isa_objects(build_dir)
    module = _module(build_dir)
    for path in [*isa_objects.values(), module]:
        sections, symbols = _sections(path), _symbols(path)
        for isa in isa_objects:
            if path.name.endswith(".o") and path.name != f"{isa}.cpp.o":
                continue
            table = [s for s in symbols if s.name == _table_symbol(isa) and s.section is not None]
            assert table, f"no {_table_symbol(isa)} defined in {path.name}"
            assert all(_is_data(s, sections) for s in table), (
                f"{isa}_table in {path.name}: "
                f"{[(s.kind, sections[s.section].name) for s in table if s.section is not None]}"
            )
        kernel = next(
            s for s in symbols if s.kind == "FUNC" and "apply_exp" in s.name and s.section is not None
        )
        assert not _is_data(kernel, sections), kernel


def _foreign_functions(isa: str, names: list[str]) -> list[str]:
    """Function symbols of an ISA object that are not in namespace fastloss::<isa>: code the linker
    could merge with a copy compiled for another ISA (inline functions and templates, the
    standard library's included)."""
    own = re.compile(rf"^_ZZ?N[rVKRO]*8fastloss{len(isa)}{isa}(?!\w*_table)")
    return [name for name in names if not own.match(name)]


def test_foreign_function_check_can_fail():
    names = [
        "_ZN8fastloss4avx29apply_expIfEEvPKT_PS2_l",
        "_ZZN8fastloss4avx213cross_entropyIfEEvvENKUllPdE_clEll",
        "_ZNK8fastloss4avx23fooEv",
        "_ZNSt6vectorIdSaIdEE17_M_realloc_insertIJRKdEEEvN9__gnu_cxx17__normal_iteratorIPdS1_EEDpOT_",
        "_ZN8fastloss6scalar9apply_logEPKdPdl",
        "_ZN8fastloss6avx5129apply_logEPKdPdl",
    ]
    assert _foreign_functions("avx2", names) == names[3:]
    assert _foreign_functions("avx512", names) == names[:5]


@needs_build
@build_dir_param
def test_isa_objects_define_only_their_own_functions(build_dir):
    for isa, path in _isa_objects(build_dir).items():
        defined = [s.name for s in _symbols(path) if s.kind == "FUNC" and s.section is not None]
        assert len(defined) > 20, f"{isa}.cpp.o defines only {defined}"
        foreign = _foreign_functions(isa, defined)
        assert not foreign, f"{isa}.cpp.o defines functions outside fastloss::{isa}: {foreign[:5]}"
