"""Build script: setuptools drives CMake, which builds the pybind11 extensions in csrc/.

* ``sgfd_fast._C``       C++17 + OpenMP kernels, always built.
* ``sgfd_fast._C_cuda``  CUDA kernels, built whenever nvcc is found (a GPU is not needed to build).

Environment switches:
  SGFD_FAST_CUDA=auto|0|1         build the CUDA module if nvcc is found (auto), never (0), or
                                  always (1: fail when nvcc is missing)
  SGFD_FAST_CUDA_ARCHS="80;90"    CUDA architectures (CMake syntax)
  SGFD_FAST_NATIVE=1|0            compile the CPU kernels for this machine's ISA (-march=native)
  SGFD_FAST_REQUIRE_EXTENSION=1   make a failed build an error instead of a references-only install
  SGFD_FAST_BUILD_TYPE=Release    CMake build type
  CMAKE_BUILD_PARALLEL_LEVEL      parallel compile jobs (default: number of CPUs)

Builds degrade, never break (design §3.3): without a compiler or CMake the package installs with its
pure-PyTorch references and ``python -m sgfd_fast.info`` says so.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_namespace_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _buildinfo():
    """sgfd_fast/_buildinfo.py, loaded by path: the package itself needs torch to import."""
    spec = importlib.util.spec_from_file_location("_sgfd_fast_buildinfo",
                                                  ROOT / "sgfd_fast" / "_buildinfo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILDINFO = _buildinfo()


def find_nvcc():
    """nvcc from CUDA_HOME, /usr/local/cuda or PATH.

    A PATH wrapper script (e.g. /usr/local/bin/nvcc) hides the toolkit root from CMake, so the real
    toolkit directories are preferred.
    """
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    return str(Path(found).resolve()) if found else None


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """One CMake run builds every module; setuptools is told about each so that wheels and
    editable installs pick them all up."""

    def run(self):
        cuda_mode = os.environ.get("SGFD_FAST_CUDA", "auto").lower()
        self.nvcc = find_nvcc() if cuda_mode != "0" else None
        self.cuda_archs = os.environ.get("SGFD_FAST_CUDA_ARCHS", "80;90")
        if cuda_mode == "1" and self.nvcc is None:
            raise RuntimeError("SGFD_FAST_CUDA=1 but nvcc was not found (set CUDA_HOME)")
        if self.nvcc is None:
            self.extensions = [e for e in self.extensions if e.name != "sgfd_fast._C_cuda"]
            cuda = ("SGFD_FAST_CUDA=0 at install" if cuda_mode == "0" else
                    "nvcc was not found at install (set CUDA_HOME and reinstall)")
        else:
            cuda = "built"
        # Beside the modules: what they were compiled from, so that a checkout without a build of
        # its own can tell whether this build matches its sources (sgfd_fast/_ext.py).
        record = {"sources": BUILDINFO.source_digest(ROOT), "cuda": cuda}
        what = (f"the C++ and CUDA (archs {self.cuda_archs}) extensions: minutes, the CUDA part "
                "is most of it" if self.nvcc else "the C++ extension")
        print(f"sgfd_fast: compiling {what} (set SGFD_FAST_CUDA=0 to skip CUDA); the compiler's "
              "progress follows", file=sys.stderr, flush=True)
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure degrades to references
            if os.environ.get("SGFD_FAST_REQUIRE_EXTENSION", "0") == "1":
                raise
            record = {"error": f"the build failed ({exc}); see pip's output (pip install -v .)",
                      "cuda": f"the build failed ({exc})"}
            bar = "!" * 78
            print(f"\n{bar}\nsgfd_fast: the compiled extension failed to build ({exc}).\n"
                  "Installing with the pure-PyTorch references only. Run "
                  "`python -m sgfd_fast.info` after installing to see what serves each op.\n"
                  f"{bar}\n", file=sys.stderr)
            self.extensions = []
        BUILDINFO.write_record(Path(self.get_ext_fullpath("sgfd_fast._C")).parent, record)

    def build_extension(self, ext):
        if ext.name != "sgfd_fast._C":
            return  # built by the same CMake run as _C
        cmake = shutil.which("cmake")
        if cmake is None:
            raise RuntimeError("cmake not found on PATH")
        extdir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        extdir.mkdir(parents=True, exist_ok=True)

        nvcc = self.nvcc
        build_type = os.environ.get("SGFD_FAST_BUILD_TYPE", "Release")
        import pybind11

        args = [
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DSGFD_FAST_NATIVE={'ON' if os.environ.get('SGFD_FAST_NATIVE', '1') == '1' else 'OFF'}",
            f"-DSGFD_FAST_WITH_CUDA={'ON' if nvcc else 'OFF'}",
        ]
        if nvcc:
            args += [f"-DCMAKE_CUDA_COMPILER={nvcc}",
                     f"-DCMAKE_CUDA_ARCHITECTURES={self.cuda_archs}"]
        if shutil.which("ninja"):
            args.append("-GNinja")
        # A persistent build tree keyed by interpreter makes rebuilds (editable installs) incremental.
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.run([cmake, str(ROOT), *args], cwd=build_dir, check=True)
        subprocess.run([cmake, "--build", ".", "--parallel", jobs], cwd=build_dir, check=True)


setup(
    # Namespace discovery also lists the data-only folders (configs, data/office, ...), which
    # setuptools otherwise warns about.
    packages=["sgfd_fast", "sgfd_fast.kernels"]
    + [f"sgfd_fast.{p}" for p in find_namespace_packages(where="sgfd_fast",
                                                         exclude=["*__pycache__*"])],
    package_dir={"sgfd_fast": "sgfd_fast", "sgfd_fast.kernels": "kernels"},
    package_data={"sgfd_fast": ["configs/**/*.yaml", "studies/*.yaml", "data/*/*.npz",
                                "data/*/*.tsv", "data/*/README.md", "py.typed"]},
    ext_modules=[CMakeExtension("sgfd_fast._C"), CMakeExtension("sgfd_fast._C_cuda")],
    cmdclass={"build_ext": CMakeBuild},
)
