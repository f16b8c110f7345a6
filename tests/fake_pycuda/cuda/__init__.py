"""A SMALL fake of cuda-python (only `cuda.bindings.runtime`), for tests without a GPU."""
FAKE = True
