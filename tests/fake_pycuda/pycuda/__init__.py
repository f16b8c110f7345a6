"""A SMALL fake of pycuda for tests without a GPU (see tests/fake_pycuda/pycuda/driver.py).

There is deliberately no ``pycuda.autoinit``: the runtime must create its context explicitly.
"""
FAKE = True
VERSION = (2024, 1, 2)
VERSION_TEXT = "2024.1.2"
