"""`python -m convert.check_trt MODEL.onnx`: the same as `rgbd-convert check-trt`."""
import sys

from .cli import main

sys.exit(main())
