#!/usr/bin/env bash
# scripts/arm64-qemu.sh [WORKDIR]   (make arm64; WORKDIR defaults to build/arm64-qemu)
#
# Runs PyTorch's real Linux aarch64 (ARM64) build on this x86-64 Debian machine under
# QEMU user-mode emulation, so that the course can record and check what torch's int8
# kernels compute on ARM (make record-arm64) and run notebooks under it (make test-arm64).
#
# Uses only apt (Debian packages, by name) and pip (wheels, by name).  Needs root (or
# passwordless sudo) for apt-get on the first run; registers no binfmt handler (qemu is
# called explicitly).  Idempotent: each step leaves a stamp in WORKDIR and a second run
# skips what is done.  Afterwards:
#     WORKDIR/arm-python -m qlib.int8.record ...     # emulated CPU: neoverse-n1 (Graviton2-like)
#     ARM_CPU=cortex-a72 WORKDIR/arm-python ...      # any of: qemu-aarch64-static -cpu help
# and the Jupyter kernel "arm64-qemu" in WORKDIR/kernels (JUPYTER_PATH=WORKDIR).
# arm-python puts the repository root first on the guest's PYTHONPATH (qlib comes from
# the checkout; ARM_NO_REPO=1 leaves it out, ARM_PYTHONPATH adds more in front).
#
# Knobs: TORCH_VERSION, TORCHVISION_VERSION (defaults: the pins in requirements.txt),
#        HOST_PYTHON (an x86 python with pip; default .venv/bin/python, else python3).
#
# How, and why:
#  1. apt: qemu-user-static (the emulator; Debian 12: qemu 7.2) and
#     binutils-aarch64-linux-gnu (assembler and linker for the CUDA stand-ins, step 4).
#  2. An aarch64 CPython from Debian's own arm64 packages, fetched with a private apt
#     state (copies of the machine's apt sources, arch arm64: the host's dpkg is not
#     touched) and unpacked with dpkg-deb -x into WORKDIR/sysroot.
#  3. Wheels for the guest with pip --target and aarch64 platform tags:
#     site-torch/: torch and torchvision, --no-deps (torch's own dependencies include
#                  CUDA wheels, which are ~3 GB and not all resolvable);
#     site/:       everything else qlib and the notebooks need (numpy, pandas, matplotlib,
#                  tqdm, ipywidgets, ipykernel, torchao, pillow, torch's pure-Python deps),
#                  resolved with their dependencies, at requirements.txt's pins and, where
#                  the host venv has the package, at the host's versions.
#  4. The aarch64 torch wheel is a CUDA build (libtorch_cpu.so itself needs libcudart).
#     Stub libraries with the same sonames and symbol versions stand in; each function
#     returns an error code, no CPU code path calls them.  They are built after every
#     wheel is in (torchvision's _C needs one more cudart symbol), and rebuilt whenever
#     the wheels change.
#  5. qemu 7.2 shows the guest the host's x86 /proc/cpuinfo, which crashes torch's cpuinfo
#     at import.  qemu resolves guest paths inside the -L root first, so a per-CPU-model
#     overlay WORKDIR/cpu/<model>/ holds an ARM proc/cpuinfo and sysfs midr_el1 files
#     written from the emulated CPU's own MIDR_EL1 and HWCAPs (arm-python builds it).
#     Paths missing from the overlay are the host's: /usr/share/datasets, /tmp, the repo.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
W="${1:-$REPO/build/arm64-qemu}"
mkdir -p "$W"; W="$(cd "$W" && pwd)"
pin() { sed -n "s/^$1==\([^ ]*\).*/\1/p" "$REPO/requirements.txt" | head -1; }
TORCH_VERSION="${TORCH_VERSION:-$(pin torch)}"
TORCHVISION_VERSION="${TORCHVISION_VERSION:-$(pin torchvision)}"
TORCH_VERSION="${TORCH_VERSION:-2.14.1}"; TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.29.1}"
if [ -n "${HOST_PYTHON:-}" ]; then PY="$HOST_PYTHON"
elif [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"
else PY=python3; fi
export DEBIAN_FRONTEND=noninteractive
log() { echo "==> arm64: $*"; }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
# A step is done when its stamp holds the same key as now.
done_() { [ -f "$W/.stamp-$1" ] && [ "$(cat "$W/.stamp-$1")" = "$2" ]; }
stamp() { echo "$2" > "$W/.stamp-$1"; }
START=$SECONDS

# ---- 1. host tools -------------------------------------------------------------
if command -v qemu-aarch64-static >/dev/null && command -v aarch64-linux-gnu-readelf >/dev/null \
   && command -v aarch64-linux-gnu-as >/dev/null && command -v aarch64-linux-gnu-ld >/dev/null; then
  log "qemu-user-static and binutils-aarch64-linux-gnu: present"
else
  log "apt: qemu-user-static binutils-aarch64-linux-gnu"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends qemu-user-static binutils-aarch64-linux-gnu >/dev/null
fi
"$PY" -m pip --version >/dev/null 2>&1 || { echo "$PY has no pip (set HOST_PYTHON)" >&2; exit 1; }

# ---- 2. aarch64 CPython from Debian's arm64 packages ------------------------------
R="$W/sysroot"
if done_ sysroot 1 && ls "$R"/usr/bin/python3.* >/dev/null 2>&1; then
  log "sysroot: present"
else
  A="$W/apt"
  mkdir -p "$A/sources.list.d" "$A/state/lists/partial" "$A/cache/archives/partial"
  : > "$A/status"
  if [ -f /etc/apt/sources.list ]; then cp /etc/apt/sources.list "$A/sources.list"; else : > "$A/sources.list"; fi
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] && cp "$f" "$A/sources.list.d/"
  done
  APTO=(-o "Dir::Etc::SourceList=$A/sources.list" -o "Dir::Etc::SourceParts=$A/sources.list.d"
        -o "Dir::State=$A/state" -o "Dir::State::status=$A/status" -o "Dir::Cache=$A/cache"
        -o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o Debug::NoLocking=1)
  log "apt (arm64, private state): update"
  apt-get "${APTO[@]}" update -qq
  PYV="$(apt-cache "${APTO[@]}" depends python3 | sed -n 's/^ *Depends: <\{0,1\}python\(3\.[0-9][0-9]*\)>\{0,1\}$/\1/p' | head -1)"
  [ -n "$PYV" ] || { echo "could not find the arm64 python3.X package" >&2; exit 1; }
  log "apt (arm64): python$PYV and its dependencies"
  apt-get "${APTO[@]}" install -y -qq -d --no-install-recommends "python$PYV" libstdc++6 libgcc-s1 zlib1g >/dev/null
  rm -rf "$R"; mkdir -p "$R"
  for d in "$A"/cache/archives/*.deb; do dpkg-deb -x "$d" "$R"; done
  for d in lib bin sbin; do [ -e "$R/$d" ] || ln -s "usr/$d" "$R/$d"; done  # merged-/usr releases
  # Empty stand-ins, so that the guest's python does not find the host's x86 packages there.
  mkdir -p "$R/usr/lib/python3/dist-packages" "$R/usr/local/lib/python$PYV/dist-packages"
  rm -rf "$A/cache/archives"/*.deb
  rm -rf "$W/cpu"
  stamp sysroot 1
fi
PYBIN="$(ls "$R"/usr/bin/python3.* | grep -E 'python3\.[0-9]+$' | head -1)"
PYV="${PYBIN##*/python}"

# ---- 3. the aarch64 wheels ---------------------------------------------------------
PLAT=(--platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux_2_26_aarch64
      --platform manylinux_2_24_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64
      --python-version "$PYV" --implementation cp --only-binary=:all:)
# pip's notes about configured index folders that lack a package are noise here.
pipq() { "$@" 2> >(grep -v 'is neither a file nor a directory' >&2); }
PIPI=(pipq "$PY" -m pip install -q --disable-pip-version-check --upgrade "${PLAT[@]}")
TORCH_SET="torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
REST="numpy pandas matplotlib tqdm ipywidgets jupyterlab_widgets ipykernel torchao pillow nbformat
      filelock typing-extensions sympy mpmath networkx jinja2 markupsafe fsspec"
# requirements.txt's pins, then the host venv's versions for everything else (excluding torch's
# own x86/CUDA packages), as constraints.  Only the pins decide whether to reinstall: a package
# added to the host venv later does not.
mkdir -p "$W/tools"
PINS="$(grep -E '^[A-Za-z0-9_.-]+==' "$REPO/requirements.txt" | grep -Ev '^(torch|torchvision)==' || true)"
{ echo "$PINS"
  "$PY" -m pip freeze --disable-pip-version-check 2>/dev/null \
    | grep -E '^[A-Za-z0-9_.-]+==' | grep -Eiv '^(torch|torchvision|triton|nvidia-|cuda-|qlib)' || true
} | sort -u -f -t= -k1,1 > "$W/tools/constraints.txt"
KEY="$PYV $TORCH_SET | $(echo $REST) | $(md5sum <<<"$PINS" | cut -c1-12)"
if done_ wheels "$KEY" && [ -d "$W/site-torch/torch" ] && [ -d "$W/site/numpy" ]; then
  log "wheels: present (python $PYV, $TORCH_SET)"
else
  log "pip: aarch64 $TORCH_SET, --no-deps, into site-torch/ (a 454 MB wheel the first time)"
  rm -f "$W/.stamp-wheels" "$W/.stamp-stubs"
  # shellcheck disable=SC2086
  "${PIPI[@]}" --no-deps --target "$W/site-torch" $TORCH_SET
  log "pip: aarch64 numpy pandas matplotlib ipykernel ipywidgets torchao ... with their dependencies, into site/"
  # shellcheck disable=SC2086
  "${PIPI[@]}" --target "$W/site" -c "$W/tools/constraints.txt" $REST
  stamp wheels "$KEY"
fi

# ---- 4. stand-ins for the CUDA libraries -------------------------------------------
cat > "$W/tools/make_cuda_stubs.py" <<'PYEOF'
"""make_cuda_stubs.py SITES SYSROOT OUTDIR: stub .so files for every soname that the aarch64
libraries under SITES (':'-separated folders) need but neither SITES nor SYSROOT provides."""
import glob, os, re, subprocess, sys
sites, sysroot, outdir = sys.argv[1].split(":"), sys.argv[2], sys.argv[3]
os.makedirs(outdir, exist_ok=True)
RE = "aarch64-linux-gnu-readelf"
def readelf(*a):
    return subprocess.run([RE, "-W", *a], capture_output=True, text=True).stdout
def is_elf(p):
    try:
        with open(p, "rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False
elves = [p for site in sites for p in glob.glob(os.path.join(site, "**", "*.so*"), recursive=True)
         if os.path.isfile(p) and not os.path.islink(p) and is_elf(p)]
sysdirs = [os.path.join(sysroot, d) for d in ("lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu")]
have = {os.path.basename(p) for p in elves}
for d in sysdirs:
    if os.path.isdir(d):
        have |= set(os.listdir(d))
missing = set()
for f in elves:
    for m in re.findall(r"\(NEEDED\).*\[(.*)\]", readelf("-d", f)):
        if m not in have:
            missing.add(m)
if not missing:
    sys.exit(0)
providers = list(elves) + glob.glob(os.path.join(sysroot, "usr/bin/python3*"))
for d in sysdirs:
    providers += [p for p in glob.glob(os.path.join(d, "*.so*")) if os.path.isfile(p) and not os.path.islink(p)]
defined = set()
for f in providers:
    for line in readelf("--dyn-syms", f).splitlines():
        p = line.split()
        if len(p) >= 8 and p[6] != "UND" and p[4] in ("GLOBAL", "WEAK"):
            defined.add(p[7].split("@")[0])
want = {lib: {} for lib in missing}
catch_all = next((l for l in sorted(missing) if l.startswith("libcudart.so")), sorted(missing)[0])
for f in elves:
    vmap, cur = {}, None
    for line in readelf("-V", f).splitlines():
        m = re.search(r"File: (\S+)", line)
        if m:
            cur = m.group(1)
        m = re.search(r"Name: (\S+)\s+Flags", line)
        if m and cur:
            vmap[m.group(1)] = cur
    for line in readelf("--dyn-syms", f).splitlines():
        p = line.split()
        if len(p) < 8 or p[6] != "UND" or not p[7]:
            continue
        typ, bind, full = p[3], p[4], p[7]
        name, _, ver = full.partition("@")
        ver = ver.lstrip("@") or None
        if ver and vmap.get(ver) in missing:
            want[vmap[ver]][name] = (ver, typ)
        elif not ver and name not in defined and bind != "WEAK":
            want[catch_all].setdefault(name, (None, typ))
for lib in sorted(missing):
    syms, base = want[lib], os.path.join(outdir, lib)
    asm = [".text", ".balign 4", "stub_ret100:", "  mov w0, #100", "  ret",
           "stub_str:", "  adrp x0, stub_msg", "  add x0, x0, :lo12:stub_msg", "  ret"]
    data = [".data", ".balign 16", 'stub_msg: .asciz "CUDA stub (no CUDA here)"']
    versions = {}
    for name, (ver, typ) in sorted(syms.items()):
        if ver:
            versions.setdefault(ver, []).append(name)
        if typ == "OBJECT":
            data += [f".globl {name}", f".type {name}, %object", f".size {name}, 256", ".balign 16", f"{name}: .zero 256"]
        else:
            tgt = "stub_str" if name in ("cudaGetErrorString", "cudaGetErrorName") else "stub_ret100"
            asm += [f".globl {name}", f".type {name}, %function", f"{name}:", f"  b {tgt}"]
    with open(base + ".s", "w") as fh:
        fh.write("\n".join(asm + data) + "\n")
    ld = []
    if versions:
        with open(base + ".map", "w") as fh:
            for ver, names in sorted(versions.items()):
                fh.write(ver + " {\n  global:\n" + "".join(f"    {n};\n" for n in sorted(names)) + "};\n")
        ld = ["--version-script", base + ".map"]
    subprocess.run(["aarch64-linux-gnu-as", "-o", base + ".o", base + ".s"], check=True)
    subprocess.run(["aarch64-linux-gnu-ld", "-shared", "-soname", lib, "-o", base, base + ".o", *ld], check=True)
    for ext in (".s", ".o", ".map"):
        if os.path.exists(base + ext):
            os.remove(base + ext)
    print(f"  stub {lib}: {len(syms)} symbols")
PYEOF
if done_ stubs "$KEY" && [ -d "$W/cuda-stubs" ]; then
  log "CUDA stand-in libraries: present"
else
  log "building the CUDA stand-in libraries (after every wheel is in)"
  rm -rf "$W/cuda-stubs"
  "$PY" "$W/tools/make_cuda_stubs.py" "$W/site-torch:$W/site" "$R" "$W/cuda-stubs"
  stamp stubs "$KEY"
fi

# ---- 5. /proc/cpuinfo overlay helper, the wrapper, the Jupyter kernel ---------------
cat > "$W/tools/cpuinfo_overlay.py" <<'PYEOF'
"""Run under qemu-aarch64 -cpu MODEL: cpuinfo_overlay.py OVERLAY NCPUS.
Writes OVERLAY/proc/cpuinfo and sysfs midr_el1 files from the emulated CPU's
MIDR_EL1 (read with mrs, which Linux and qemu-user allow at EL0) and HWCAP."""
import ctypes, mmap, os, sys
root, n = sys.argv[1], int(sys.argv[2])
buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
buf.write((0xd5380000).to_bytes(4, "little") + (0xd65f03c0).to_bytes(4, "little"))  # mrs x0, midr_el1; ret
midr = ctypes.CFUNCTYPE(ctypes.c_uint64)(ctypes.addressof(ctypes.c_char.from_buffer(buf)))()
libc = ctypes.CDLL(None); libc.getauxval.restype = ctypes.c_ulong
hwcap = libc.getauxval(16)
names = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
         "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
feats = " ".join(x for i, x in enumerate(names) if hwcap >> i & 1)
impl, var, part, rev = midr >> 24 & 0xff, midr >> 20 & 0xf, midr >> 4 & 0xfff, midr & 0xf
os.makedirs(os.path.join(root, "proc"), exist_ok=True)
with open(os.path.join(root, "proc", "cpuinfo"), "w") as fh:
    for i in range(n):
        fh.write(f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {feats}\nCPU implementer\t: 0x{impl:02x}\n"
                 f"CPU architecture: 8\nCPU variant\t: 0x{var:x}\nCPU part\t: 0x{part:03x}\nCPU revision\t: {rev}\n\n")
for i in range(n):
    d = os.path.join(root, f"sys/devices/system/cpu/cpu{i}/regs/identification")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "midr_el1"), "w") as fh:
        fh.write(f"0x{midr:016x}\n")
    with open(os.path.join(d, "revidr_el1"), "w") as fh:
        fh.write("0x0000000000000000\n")
print(f"midr=0x{midr:08x} hwcap=0x{hwcap:x}")
PYEOF
# The guest's sys.executable is an aarch64 ELF file, which the host cannot exec (no binfmt handler):
# a subprocess started with [sys.executable, ...] (notebook 08 does) would fail with "Exec format
# error".  This sitecustomize (first on the guest's path; it shadows Debian's, which only hooks
# apport) makes sys.executable the wrapper, a host script that runs qemu again.
mkdir -p "$W/guest"
cat > "$W/guest/sitecustomize.py" <<'PYEOF'
"""arm-python's guest start-up (scripts/arm64-qemu.sh): sys.executable names the wrapper, so that
subprocesses started with sys.executable run under qemu too."""
import os
import sys

if os.environ.get("ARM_PYTHON"):
    sys.executable = os.environ["ARM_PYTHON"]
PYEOF
cat > "$W/arm-python.new" <<EOF
#!/usr/bin/env bash
# aarch64 python $PYV with torch $TORCH_VERSION (Linux aarch64 wheel), under qemu-user.
# Written by scripts/arm64-qemu.sh.  ARM_CPU: the emulated CPU model (default neoverse-n1;
# list: qemu-aarch64-static -cpu help).  The guest's PYTHONPATH: ARM_PYTHONPATH, the
# repository root (unless ARM_NO_REPO=1), then the wheels; sys.executable is this wrapper.  The rest of the environment
# (QLIB_SMOKE, QLIB_ENGINE, ...) passes through.
W="\$(cd "\$(dirname "\${BASH_SOURCE[0]}")" && pwd)"
REPO="$REPO"
CPU="\${ARM_CPU:-neoverse-n1}"
O="\$W/cpu/\$CPU"
if [ ! -e "\$O/proc/cpuinfo" ]; then
  mkdir -p "\$O"
  for d in bin etc lib sbin usr var; do [ -e "\$W/sysroot/\$d" ] && ln -sfn "\$W/sysroot/\$d" "\$O/\$d"; done
  qemu-aarch64-static -cpu "\$CPU" -L "\$W/sysroot" "\$W/sysroot/usr/bin/python$PYV" \\
      "\$W/tools/cpuinfo_overlay.py" "\$O" "\$(nproc --all)" >&2 || exit 1
fi
PP="\$W/guest:\$W/site-torch:\$W/site"
[ "\${ARM_NO_REPO:-0}" = 1 ] || PP="\$REPO:\$PP"
[ -z "\${ARM_PYTHONPATH:-}" ] || PP="\$ARM_PYTHONPATH:\$PP"
exec qemu-aarch64-static -cpu "\$CPU" -L "\$O" -E "LD_LIBRARY_PATH=\$W/cuda-stubs" \\
    -E "PYTHONPATH=\$PP" -E PYTHONNOUSERSITE=1 -E "ARM_PYTHON=\$W/arm-python" -U PYTHONHOME "\$O/usr/bin/python$PYV" "\$@"
EOF
chmod +x "$W/arm-python.new"; mv -f "$W/arm-python.new" "$W/arm-python"
mkdir -p "$W/kernels/arm64-qemu"
cat > "$W/kernels/arm64-qemu/kernel.json" <<EOF
{
 "argv": ["$W/arm-python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
 "display_name": "Python $PYV (Linux aarch64 torch $TORCH_VERSION, qemu)",
 "language": "python",
 "metadata": {"debugger": false}
}
EOF

# ---- 6. smoke test ------------------------------------------------------------------
if done_ smoke "$KEY"; then
  log "smoke test: passed before"
else
  log "smoke test (importing torch, torchvision, torchao, pandas, ipykernel, qlib under qemu takes a few minutes)"
  (cd "$REPO" && "$W/arm-python" -c "import platform, torch, torchvision, torchao, pandas, matplotlib, ipykernel, ipywidgets, tqdm
import qlib.engines, qlib.int8.record, qlib.int8.replay
torch.backends.quantized.engine = 'qnnpack'
x = torch.quantize_per_tensor(torch.arange(8.0), 0.5, 3, torch.quint8)
assert torch.ops.quantized.add(x, x, 1.0, 0).int_repr().tolist() == list(range(0, 16, 2))
print(platform.machine(), torch.__version__, torchvision.__version__, torchao.__version__,
      torch.backends.quantized.supported_engines, qlib.engines.available_engines(), torch.backends.cpu.get_cpu_capability())")
  stamp smoke "$KEY"
fi
log "ready in $((SECONDS - START)) s: $W/arm-python; Jupyter kernel arm64-qemu with JUPYTER_PATH=$W"
