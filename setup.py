"""Build glue: the Cython core and the namespaced package layout.

ext/_core.pyx compiles to ``limiter._core``, ext/wire.pyx (the decision service's protobuf
wire codecs) to ``limiter._wire`` and ext/relay.pyx (the Redis backend's thread wake-ups) to
``limiter._relay``; ``server/`` and ``clients/`` install as ``limiter.server``
and ``limiter.clients`` (never as top-level modules).
"""

import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

ROOTS = {"limiter": "limiter", "limiter.server": "server", "limiter.clients": "clients"}
DATA = ["*.pyi", "py.typed", "*.lua", "lua/*.lua", "*.proto", "*.yaml", "static/*", "static/**/*"]


def discover() -> tuple[list[str], dict[str, str]]:
    """Every package under the three roots, with its source directory."""
    packages, package_dir = [], {}
    for name, root in ROOTS.items():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "__"))]
            if "__init__.py" not in filenames:
                continue
            rel = os.path.relpath(dirpath, root)
            pkg = name if rel == "." else name + "." + rel.replace(os.sep, ".")
            packages.append(pkg)
            package_dir[pkg] = dirpath
    return packages, package_dir


packages, package_dir = discover()

extensions = [
    Extension(
        "limiter._core",
        sources=["ext/_core.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    ),
    Extension("limiter._wire", sources=["ext/wire.pyx"], extra_compile_args=["-O3"]),
    Extension("limiter._relay", sources=["ext/relay.pyx"], extra_compile_args=["-O3"]),
]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={pkg: DATA for pkg in packages},
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    ),
)
