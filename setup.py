"""Build script: what pyproject.toml cannot say.

- One wheel per platform: the C core is a cffi extension built for the
  stable ABI (cffi sets ``py_limited_api`` on it: ``kvmstat/_native.abi3.so``),
  so the wheel is tagged ``cp39-abi3`` and serves every CPython from 3.9 on.
- The man page goes to ``<prefix>/share/man/man1``, where ``man`` finds it for
  a system prefix and for a virtual environment (man's search path includes
  ``bin/../share/man`` of each PATH entry).
"""

from setuptools import setup

setup(
    cffi_modules=["csrc/build_native.py:ffibuilder"],
    data_files=[("share/man/man1", ["man/kvm_stat.1"])],
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
