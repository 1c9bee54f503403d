from setuptools import setup

setup(cffi_modules=["vhdkit/_build.py:ffibuilder"])
