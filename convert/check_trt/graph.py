"""`GraphIndex`: producers, consumers, constants, inferred types and shapes of the main graph.

Built once per model and shared by the checks. Types and shapes come from onnx shape inference
(with data propagation), refined by folding small constant/shape subgraphs (fold.py) the way
TensorRT folds them at build time.
"""
from __future__ import annotations

import numpy as np

from .rules import FLOAT, INT64, PROJECT_OPSET
from .walk import default_opset, node_label, onnx_lib


class GraphIndex:
    """Producers, consumers, constants, inferred types and shapes of the main graph."""

    # values up to this many elements are folded (shape vectors, pads, scales, small constants)
    FOLD_LIMIT = 4096

    def __init__(self, model):
        self.model = model
        self.opset = default_opset(model) or PROJECT_OPSET
        self.shape_inference_error: str | None = None
        inferred = self._infer_shapes(model)
        self.graph = model.graph
        self.nodes = list(model.graph.node)
        self.labels = {id(n): node_label(n, i) for i, n in enumerate(self.nodes)}
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.input_names = [v.name for v in model.graph.input if v.name not in self.initializers]
        self.output_names = [v.name for v in model.graph.output]
        self._index_edges()
        self._index_types(inferred.graph)
        self._const_cache: dict[str, np.ndarray | None] = {}
        self.input_symbols = {d for n in self.input_names for d in (self.shapes.get(n) or [])
                              if isinstance(d, str)}
        # Fold small constant/shape-only subgraphs and re-infer node by node with their values:
        # TensorRT folds such shape tensors at build time when the inputs are static, while ONNX's
        # data propagation stops at Div/Transpose/Slice & co (torch's F.pad export, for one).
        self.folded: dict[str, np.ndarray] = {}
        if self.shape_inference_error is None:
            from .fold import propagate_constants

            try:
                propagate_constants(self)
            except Exception:  # noqa: BLE001 - the pass only refines; the baseline stays valid
                pass

    def _infer_shapes(self, model):
        """The model with onnx's inferred value_info, or the model itself if inference fails."""
        onnx = onnx_lib()
        try:
            return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False,
                                                     data_prop=True)
        except Exception as exc:  # noqa: BLE001 - any failure just means "no inferred shapes"
            self.shape_inference_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return model

    def _index_edges(self) -> None:
        self.producer: dict[str, object] = {}
        self.consumers: dict[str, list[tuple[object, int]]] = {}
        for n in self.nodes:
            for o in n.output:
                if o:
                    self.producer[o] = n
            for i, name in enumerate(n.input):
                if name:
                    self.consumers.setdefault(name, []).append((n, i))

    def _index_types(self, inferred_graph) -> None:
        """Types and shapes: declared I/O, inferred value_info, initializers, Constant nodes."""
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list | None] = {}
        g = inferred_graph
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            self.record(vi)
        for t in self.model.graph.initializer:
            self.types[t.name] = t.data_type
            self.shapes[t.name] = list(t.dims)

    def record(self, vi) -> None:
        """Take the element type and shape of a ValueInfoProto (symbolic dims as their names)."""
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is None:
            return
        if tt.elem_type:
            self.types[vi.name] = tt.elem_type
        if tt.HasField("shape"):
            dims = []
            for d in tt.shape.dim:
                if d.HasField("dim_value"):
                    dims.append(int(d.dim_value))
                elif d.HasField("dim_param"):
                    dims.append(d.dim_param)
                else:
                    dims.append(None)
            self.shapes[vi.name] = dims
        else:
            self.shapes.setdefault(vi.name, None)

    def label(self, node) -> str:
        return self.labels.get(id(node)) or node_label(node, -1)

    def shape(self, name: str) -> list | None:
        return self.shapes.get(name)

    def static_shape(self, name: str) -> list[int] | None:
        s = self.shapes.get(name)
        if s is None or any(not isinstance(d, int) or d < 0 for d in s):
            return None
        return s

    def is_constant(self, name: str) -> bool:
        if name in self.initializers:
            return True
        p = self.producer.get(name)
        return p is not None and p.op_type == "Constant"

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant output, or None (not constant, or external)."""
        if name in self._const_cache:
            return self._const_cache[name]
        try:
            value = self._read_const(name)
        except Exception:  # noqa: BLE001 - a malformed tensor is "unknown", not a crash
            value = None
        self._const_cache[name] = value
        return value

    def _read_const(self, name: str) -> np.ndarray | None:
        onnx = onnx_lib()
        if name in self.initializers:
            t = self.initializers[name]
            if t.data_location != onnx.TensorProto.EXTERNAL:
                return onnx.numpy_helper.to_array(t)
            return None
        p = self.producer.get(name)
        if p is None or p.op_type != "Constant" or not p.attribute:
            return None
        a = p.attribute[0]
        v = onnx.helper.get_attribute_value(a)
        if a.name == "value":
            if v.data_location != onnx.TensorProto.EXTERNAL:
                return onnx.numpy_helper.to_array(v)
        elif a.name in ("value_float", "value_floats"):
            return np.asarray(v, dtype=np.float32)
        elif a.name in ("value_int", "value_ints"):
            return np.asarray(v, dtype=np.int64)
        return None

    def static_value(self, name: str) -> np.ndarray | None:
        """A constant, or a value TensorRT can fold at build time (small shape/constant subgraph)."""
        v = self.const(name)
        return v if v is not None else self.folded.get(name)

    def const_type(self, name: str) -> int | None:
        """ONNX data type of a constant (initializer or Constant node), or the inferred type."""
        if name in self.initializers:
            return self.initializers[name].data_type
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant" and p.attribute:
            a = p.attribute[0]
            if a.name == "value":
                return a.t.data_type
            if a.name in ("value_float", "value_floats"):
                return FLOAT
            if a.name in ("value_int", "value_ints"):
                return INT64
        return self.types.get(name)


def index_for(model, ctx: GraphIndex | None) -> GraphIndex:
    """`ctx` when the caller (check_model) built one already, else a fresh index of `model`."""
    return ctx if ctx is not None else GraphIndex(model)
