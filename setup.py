"""Build fastws: the Cython extensions, compiled against the C headers in include/.

The headers are also copied into the package (fastws/include) so that an installed
fastws can hand them to other C or Cython code through fastws.get_include().
"""

import os
import shutil
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
INCLUDE = os.path.join(HERE, "include")

EXTENSIONS = ["fastws._codec", "fastws._protocol", "fastws._transport", "fastws._connection",
              "fastws._poll", "fastws._inbox", "fastws._fanout", "fastws._asyncio_transport",
              "fastws._asyncio_websocket", "fastws._http_head"]


def extension(name: str) -> Extension:
    compile_args = ["-O3"] if sys.platform != "win32" else ["/O2"]
    return Extension(
        name,
        [name.replace(".", "/") + ".pyx"],
        include_dirs=[INCLUDE],
        extra_compile_args=compile_args,
    )


class BuildPyWithHeaders(build_py):
    """Ship include/fastws/*.h inside the package as fastws/include/fastws/."""

    def run(self) -> None:
        super().run()
        target = os.path.join(self.build_lib, "fastws", "include", "fastws")
        os.makedirs(target, exist_ok=True)
        for header in os.listdir(os.path.join(INCLUDE, "fastws")):
            if header.endswith(".h"):
                shutil.copy(os.path.join(INCLUDE, "fastws", header), target)


class ParallelBuildExt(build_ext):
    """Compile the extensions side by side, one per core (unless `-j N` says otherwise):
    a build from clean is the longest step of an install, of CI and of the wheel tests."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1


setup(
    ext_modules=cythonize(
        [extension(name) for name in EXTENSIONS],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
        include_path=["fastws"],
        nthreads=os.cpu_count() or 1,
    ),
    cmdclass={"build_py": BuildPyWithHeaders, "build_ext": ParallelBuildExt},
)
