"""`rgbd-convert check-trt`: static TensorRT 10.3 lint of ONNX graphs.

Graphs are built in memory with onnx.helper (written to tmp_path where a file is needed); one
tiny torch conv net is exported once per session and quantised with onnxruntime in a few
configurations. No TensorRT is involved: see docs/check-trt.md.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime.quantization as ort_q
import pytest
from onnx import TensorProto, helper, numpy_helper

from convert import check_trt as ct
from convert.check_trt import ERROR, WARNING, Finding

F = TensorProto.FLOAT


# ---------------------------------------------------------------------------- helpers
def make_model(nodes, inputs, outputs, initializers=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    opsets = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, v) for d, v in extra_opsets]]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def vi(name, dtype=F, shape=None):
    return helper.make_tensor_value_info(name, dtype, shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def conv_model(**kw):
    """x[1,2,8,8] -> Conv(3x2x3x3, pads 1) -> Relu -> y: a clean static graph."""
    w = init("w", np.random.default_rng(0).standard_normal((3, 2, 3, 3)).astype(np.float32))
    b = init("b", np.zeros(3, np.float32))
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu1")]
    return make_model(nodes, [vi("x", shape=kw.get("x_shape", [1, 2, 8, 8]))],
                      [vi("y", shape=None)], [w, b], opset=kw.get("opset", 17))


def qdq_conv_model(*, act_zp=np.int8(0), act_scale=np.float32(0.05), w_scale=None, w_axis=None,
                   w_zp=None, transpose=False, extra_q=False):
    """x -> Q -> DQ -> Conv/ConvTranspose(DQ(int8 W)) -> y, parametrised to break one rule."""
    if transpose:  # ConvTranspose weights are [in=2, out/groups=3, k, k]
        wq = np.ones((2, 3, 2, 2), np.int8)
        out_ch, default_axis = 3, 1
    else:
        wq = np.ones((3, 2, 3, 3), np.int8)
        out_ch, default_axis = 3, 0
    if w_scale is None:
        w_scale = np.full(out_ch, 0.01, np.float32)
    w_scale = np.asarray(w_scale, np.float32)
    if w_zp is None:
        w_zp = np.zeros(w_scale.shape, np.int8)
    inits = [init("x_scale", np.asarray(act_scale, np.float32)), init("x_zp", np.asarray(act_zp)),
             init("w_q", wq), init("w_scale", w_scale), init("w_zp", np.asarray(w_zp))]
    dq_w_attrs = {"axis": w_axis if w_axis is not None else default_axis} if w_scale.size > 1 else {}
    op = "ConvTranspose" if transpose else "Conv"
    conv_attrs = {"strides": [2, 2]} if transpose else {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"], name="dq_w", **dq_w_attrs),
        helper.make_node(op, ["xd", "wd"], ["y"], name="conv_q", **conv_attrs),
    ]
    outputs = [vi("y")]
    if extra_q:  # a QuantizeLinear nobody dequantises
        nodes.append(helper.make_node("QuantizeLinear", ["y", "x_scale", "x_zp"], ["yq"], name="q_orphan"))
        outputs.append(vi("yq", TensorProto.INT8))
    return make_model(nodes, [vi("x", shape=[1, 2, 8, 8])], outputs, inits)


def errors(findings):
    return [f for f in findings if f.severity == ERROR]


def warnings_(findings):
    return [f for f in findings if f.severity == WARNING]


def by_check(findings, check):
    return [f for f in findings if f.check == check]


# ---------------------------------------------------------------------------- torch / ORT fixtures
@pytest.fixture(scope="session")
def tiny_fp32(tmp_path_factory, torch_single_thread):
    """Tiny conv net (Conv-BN-ReLU, MaxPool, grouped Conv, ConvTranspose, bilinear Resize, Add,
    F.pad) exported like convert/ exports: opset 17, TorchScript exporter, static shapes."""
    import warnings

    torch = torch_single_thread

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(4, 8, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(8)
            self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2)
            self.up = torch.nn.ConvTranspose2d(8, 4, 2, stride=2)
            self.head = torch.nn.Conv2d(4, 1, 1)

        def forward(self, x):
            y = torch.relu(self.bn(self.c1(x)))
            y = torch.nn.functional.max_pool2d(y, 2)
            y = torch.relu(self.c2(y))
            y = self.up(y)
            z = torch.nn.functional.interpolate(y, scale_factor=0.5, mode="bilinear", align_corners=False)
            y = y + torch.nn.functional.interpolate(z, scale_factor=2.0, mode="bilinear", align_corners=False)
            # torch exports constant pads as a ConstantOfShape/Slice/Transpose subgraph: must fold
            return self.head(torch.nn.functional.pad(y, (0, 1, 0, 1)))

    torch.manual_seed(0)
    model = Tiny().eval()
    out = tmp_path_factory.mktemp("trt") / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation, Slice constant-folding notes
        torch.onnx.export(model, (torch.randn(1, 4, 16, 16),), str(out), opset_version=17, dynamo=False,
                          input_names=["x"], output_names=["y"])
    return out


def quantize(fp32, out, **over):
    class Reader(ort_q.CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.it = iter([{"x": rng.random((1, 4, 16, 16), dtype=np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    kw = dict(quant_format=ort_q.QuantFormat.QDQ, activation_type=ort_q.QuantType.QInt8,
              weight_type=ort_q.QuantType.QInt8, per_channel=True,
              extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    kw.update(over)
    ort_q.quantize_static(str(fp32), str(out), Reader(), **kw)
    return out


# ---------------------------------------------------------------------------- clean graphs
def test_crafted_clean_graph_has_no_findings(tmp_path):
    path = tmp_path / "clean.onnx"
    onnx.save(conv_model(), path)
    assert ct.check_file(path) == []
    assert ct.main([str(path)]) == 0


def test_torch_export_is_clean(tiny_fp32):
    assert ct.check_file(tiny_fp32) == []


def test_ort_qdq_per_channel_symmetric_int8_is_clean(tiny_fp32, tmp_path):
    q = quantize(tiny_fp32, tmp_path / "q.onnx")
    findings = ct.check_file(q)
    assert findings == [], "\n".join(map(str, findings))
    assert ct.main([str(q)]) == 0


def test_ort_default_bias_quantisation_is_flagged(tiny_fp32, tmp_path):
    # onnxruntime's default QuantizeBias=True emits DequantizeLinear(int32 bias): TensorRT rejects it.
    q = quantize(tiny_fp32, tmp_path / "qbias.onnx",
                 extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    errs = errors(ct.check_file(q))
    assert errs and all(f.check == "qdq" and "int32" in f.message for f in errs)
    assert all("QuantizeBias" in f.fix for f in errs)
    assert any(f.node == "c2.bias_DequantizeLinear" for f in errs)


def test_ort_per_tensor_weights_are_flagged(tiny_fp32, tmp_path):
    q = quantize(tiny_fp32, tmp_path / "qpt.onnx", per_channel=False)
    errs = errors(ct.check_file(q))
    flagged = {f.node for f in errs if "per-tensor" in f.message}
    # every conv with more than one output channel; the 1-channel head is per-channel by definition
    assert flagged == {"/c1/Conv", "/c2/Conv", "/up/ConvTranspose"}


def test_ort_uint8_activations_are_flagged(tiny_fp32, tmp_path):
    from onnxruntime.quantization import QuantType

    q = quantize(tiny_fp32, tmp_path / "qu8.onnx", activation_type=QuantType.QUInt8)
    errs = errors(ct.check_file(q))
    assert any("uint8" in f.message and f.op == "QuantizeLinear" for f in errs)


def test_ort_asymmetric_activations_are_flagged(tiny_fp32, tmp_path):
    q = quantize(tiny_fp32, tmp_path / "qasym.onnx",
                 extra_options={"ActivationSymmetric": False, "WeightSymmetric": True, "QuantizeBias": False})
    errs = errors(ct.check_file(q))
    assert any("non-zero" in f.message and "symmetric" in f.message for f in errs)


# ---------------------------------------------------------------------------- 1. ops
def test_unsupported_op_unique_is_an_error():
    m = make_model([helper.make_node("Unique", ["x"], ["y"], name="uniq")],
                   [vi("x", shape=[8])], [vi("y")])
    (f,) = ct.check_ops(m)
    assert (f.severity, f.node, f.op) == (ERROR, "uniq", "Unique")
    assert "not supported" in f.message


def test_com_microsoft_op_is_an_error_with_fusion_hint():
    node = helper.make_node("FusedConv", ["x", "w"], ["y"], name="fused", domain="com.microsoft",
                            activation="Relu")
    m = make_model([node], [vi("x", shape=[1, 2, 8, 8])], [vi("y")],
                   [init("w", np.ones((3, 2, 1, 1), np.float32))], extra_opsets=[("com.microsoft", 1)])
    (f,) = ct.check_ops(m)
    assert f.severity == ERROR and f.node == "fused" and f.op == "com.microsoft:FusedConv"
    assert "QuantFormat.QDQ" in f.fix and "fusions" in f.fix


def test_custom_domain_and_qoperator_ops_are_errors():
    nodes = [helper.make_node("MyOp", ["x"], ["t"], name="mine", domain="acme"),
             helper.make_node("QLinearConv", ["t"], ["y"], name="qconv")]
    m = make_model(nodes, [vi("x", shape=[1])], [vi("y")], extra_opsets=[("acme", 1)])
    found = {f.node: f for f in ct.check_ops(m)}
    assert found["mine"].op == "acme:MyOp" and "plugin" in found["mine"].message
    assert "QuantFormat.QDQ" in found["qconv"].fix


def test_supported_table_covers_a_cnn():
    for op in ("Conv", "ConvTranspose", "BatchNormalization", "Relu", "MaxPool", "Resize", "Concat",
               "QuantizeLinear", "DequantizeLinear", "Pad", "Gemm", "GlobalAveragePool", "Sigmoid"):
        assert op in ct.TRT_OPS
    assert not set(ct.TRT_OPS) & set(ct.UNSUPPORTED_OPS)


# ---------------------------------------------------------------------------- 2. attributes
def _resize_model(**attrs):
    scales = init("scales", np.array([1, 1, 2, 2], np.float32))
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="rs", **attrs)
    return make_model([node], [vi("x", shape=[1, 2, 4, 4])], [vi("y")], [scales])


@pytest.mark.parametrize("attrs, needle", [
    ({"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"}, "tf_crop_and_resize"),
    ({"mode": "linear", "antialias": 1}, "antialias"),
    ({"mode": "nearest", "keep_aspect_ratio_policy": "not_larger"}, "keep_aspect_ratio_policy"),
])
def test_resize_modes_trt_rejects(attrs, needle):
    errs = errors(ct.check_attributes(_resize_model(**attrs)))
    assert errs and errs[0].node == "rs" and needle in errs[0].message


def test_resize_modes_trt_accepts():
    for attrs in ({"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"},
                  {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
                  {"mode": "linear", "coordinate_transformation_mode": "align_corners"}):
        assert ct.check_attributes(_resize_model(**attrs)) == []


def test_linear_resize_of_channel_axis_is_an_error():
    scales = init("scales", np.array([1, 2, 2, 2], np.float32))
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="rs4", mode="linear")
    m = make_model([node], [vi("x", shape=[1, 2, 4, 4])], [vi("y")], [scales])
    assert ct.check_attributes(m) == []  # 3 innermost axes: still fine
    scales5 = init("scales", np.array([2, 2, 2, 2], np.float32))
    m = make_model([node], [vi("x", shape=[1, 2, 4, 4])], [vi("y")], [scales5])
    assert errors(ct.check_attributes(m))


def test_upsample_pad_and_pooling_restrictions():
    inits = [init("scales", np.array([1, 1, 2, 2], np.float32)), init("pads", np.zeros(8, np.int64)),
             init("one", np.array([1], np.int64))]
    nodes = [
        helper.make_node("Upsample", ["x", "scales"], ["u"], name="ups"),
        helper.make_node("Pad", ["x", "pads"], ["p"], name="pad_wrap", mode="wrap"),  # wrap: TRT >= 10.0
        helper.make_node("MaxPool", ["x"], ["m"], name="mp_dil", kernel_shape=[2, 2], dilations=[2, 2]),
        helper.make_node("MaxPool", ["x"], ["m2", "idx"], name="mp_idx", kernel_shape=[2, 2]),
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "one"], ["ax"], name="g"),
        helper.make_node("Squeeze", ["x", "ax"], ["sq"], name="sq_dyn"),
    ]
    m = make_model(nodes, [vi("x", shape=[1, 2, 4, 4])],
                   [vi("u"), vi("p"), vi("m"), vi("m2"), vi("idx", TensorProto.INT64), vi("sq")], inits, opset=13)
    found = {f.node: f for f in ct.check_attributes(m)}
    assert found["ups"].severity == ERROR and "Resize" in found["ups"].fix
    assert "pad_wrap" not in found
    assert "dilation" in found["mp_dil"].message
    assert "Indices" in found["mp_idx"].message
    assert "axes" in found["sq_dyn"].message and found["sq_dyn"].severity == ERROR


def test_pool_ceil_mode_mismatch_is_a_warning():
    node = helper.make_node("MaxPool", ["x"], ["y"], name="mp_ceil", kernel_shape=[2, 2], strides=[2, 2],
                            ceil_mode=1, pads=[0, 0, 1, 1])
    m = make_model([node], [vi("x", shape=[1, 1, 4, 4])], [vi("y")])
    (f,) = ct.check_attributes(m)
    assert f.severity == WARNING and "ceil_mode" in f.message
    ok = helper.make_node("MaxPool", ["x"], ["y"], name="mp_ok", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    assert ct.check_attributes(make_model([ok], [vi("x", shape=[1, 1, 4, 4])], [vi("y")])) == []


def test_convtranspose_output_padding_with_same_auto_pad_is_an_error():
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="deconv", strides=[2, 2],
                            auto_pad="SAME_UPPER", output_padding=[1, 1])
    m = make_model([node], [vi("x", shape=[1, 2, 4, 4])], [vi("y")],
                   [init("w", np.ones((2, 3, 3, 3), np.float32))])
    errs = errors(ct.check_attributes(m))
    assert errs and errs[0].node == "deconv" and "output_padding" in errs[0].message


# ---------------------------------------------------------------------------- 3. shapes
def test_dynamic_batch_is_an_error_unless_allowed(tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(conv_model(x_shape=["batch", 2, 8, 8]), path)
    (f,) = ct.check_file(path)
    assert (f.severity, f.node, f.check) == (ERROR, "x", "shapes") and "batch" in f.message
    allowed = ct.check_file(path, allow_dynamic=True)
    assert [g.severity for g in allowed] == [WARNING]  # downstream "batch" dims are not re-reported
    assert ct.main([str(path)]) == 1
    assert ct.main([str(path), "--allow-dynamic"]) == 0


def test_zero_sized_input_dim_is_an_error():
    m = conv_model(x_shape=[1, 2, 0, 8])
    assert errors(ct.check_dynamic_shapes(m))


def test_uninferable_intermediate_shape_is_a_warning():
    nodes = [helper.make_node("NonZero", ["x"], ["nz"], name="nonzero"),
             helper.make_node("Cast", ["nz"], ["y"], name="cast", to=F)]
    m = make_model(nodes, [vi("x", shape=[4, 4])], [vi("y")])
    found = ct.check_dynamic_shapes(m)
    assert found and all(f.severity == WARNING for f in found)
    assert any(f.node == "nonzero" and "'nz'" in f.message for f in found)


def test_constant_subgraphs_are_folded_before_judging_shapes():
    # pads = Concat(const, const) is foldable: no shape or pads warning; pads from an input is not
    inits = [init("p0", np.zeros(4, np.int64)), init("p1", np.array([0, 0, 1, 1], np.int64))]
    nodes = [helper.make_node("Concat", ["p0", "p1"], ["pads"], name="cat", axis=0),
             helper.make_node("Pad", ["x", "pads"], ["y"], name="pad_folded"),
             helper.make_node("Pad", ["x", "rt_pads"], ["z"], name="pad_runtime")]
    m = make_model(nodes, [vi("x", shape=[1, 2, 4, 4]), vi("rt_pads", TensorProto.INT64, [8])],
                   [vi("y"), vi("z")], inits)
    ctx = ct.GraphIndex(m)
    assert ctx.shape("y") == [1, 2, 5, 5]
    found = ct.check_dynamic_shapes(m, ctx) + ct.check_attributes(m, ctx)
    assert {f.node for f in found} == {"pad_runtime"}
    assert all(f.severity == WARNING for f in found)


# ---------------------------------------------------------------------------- 4. int64
def test_int64_into_feature_add_is_an_error_but_shape_plumbing_is_fine():
    inits = [init("one", np.ones((1, 1, 4, 4), np.int64)), init("idx0", np.array(0, np.int64)),
             init("minus1", np.array([-1], np.int64)), init("ax0", np.array([0], np.int64))]
    nodes = [
        # shape plumbing: Shape -> Gather -> Unsqueeze -> Concat -> Reshape (fine)
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "idx0"], ["n"], name="gather_n", axis=0),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"], name="unsq"),
        helper.make_node("Concat", ["n1", "minus1"], ["newshape"], name="cat_shape", axis=0),
        helper.make_node("Reshape", ["x", "newshape"], ["flat"], name="reshape"),
        # int64 data path: ArgMax -> Transpose (movement: passes) -> Add(int64 feature map) -> Cast
        helper.make_node("ArgMax", ["x"], ["am0"], name="argmax", axis=1, keepdims=1),
        helper.make_node("Transpose", ["am0"], ["am"], name="moves", perm=[0, 1, 2, 3]),
        helper.make_node("Add", ["am", "one"], ["am1"], name="add_int64"),
        helper.make_node("Cast", ["am1"], ["y"], name="cast", to=F),
    ]
    m = make_model(nodes, [vi("x", shape=[1, 3, 4, 4])], [vi("flat"), vi("y")], inits)
    found = ct.check_int64(m)
    assert [(f.severity, f.node, f.op) for f in found] == [(ERROR, "add_int64", "Add")]
    assert "'am'" in found[0].message


def test_int64_graph_io_and_int64_into_conv_are_errors():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv_i64")]
    m = make_model(nodes, [vi("x", TensorProto.INT64, [1, 2, 4, 4])], [vi("y", TensorProto.INT64)],
                   [init("w", np.ones((1, 2, 1, 1), np.int64))])
    found = {(f.node, f.op) for f in ct.check_int64(m)}
    assert {("x", "graph input"), ("y", "graph output"), ("conv_i64", "Conv")} <= found


# ---------------------------------------------------------------------------- 5. Q/DQ
def test_crafted_qdq_conv_is_clean():
    assert ct.check_qdq(qdq_conv_model()) == []
    assert ct.check_qdq(qdq_conv_model(transpose=True)) == []


def test_nonzero_zero_point_is_an_error():
    errs = errors(ct.check_qdq(qdq_conv_model(act_zp=np.int8(3))))
    # q_x and dq_x share the zero-point tensor: reported once, naming the first node
    assert [f.node for f in errs] == ["q_x"]
    assert "non-zero" in errs[0].message and "shared with 1 other" in errs[0].message


def test_uint8_zero_point_is_an_error():
    errs = errors(ct.check_qdq(qdq_conv_model(act_zp=np.uint8(0))))
    assert errs and all("uint8" in f.message for f in errs)


def test_zero_or_negative_scale_is_an_error():
    assert any("zero" in f.message for f in errors(ct.check_qdq(qdq_conv_model(act_scale=np.float32(0)))))
    errs = errors(ct.check_qdq(qdq_conv_model(w_scale=[0.1, -0.1, 0.1])))
    assert any(f.node == "dq_w" and "negative" in f.message for f in errs)


def test_per_tensor_conv_weights_are_an_error():
    errs = errors(ct.check_qdq(qdq_conv_model(w_scale=np.float32(0.02))))
    assert [(f.node, f.op) for f in errs] == [("conv_q", "Conv")] and "per-tensor" in errs[0].message


def test_per_channel_weight_axis_and_count_are_checked():
    # ConvTranspose weights [in, out/groups, k, k] must be quantised on axis 1
    errs = errors(ct.check_qdq(qdq_conv_model(transpose=True, w_scale=[0.1, 0.1], w_axis=0)))
    assert any(f.node == "conv_q" and "axis" in f.message for f in errs)
    errs = errors(ct.check_qdq(qdq_conv_model(w_scale=[0.1, 0.1, 0.1, 0.1], w_axis=0)))
    assert errs and any("scales" in f.message for f in errs)


def test_per_channel_activation_and_orphan_quantize_are_warnings():
    found = ct.check_qdq(qdq_conv_model(extra_q=True))
    assert [(f.severity, f.node) for f in found] == [(WARNING, "q_orphan")]
    m = qdq_conv_model()
    # make the activation Q/DQ per-channel: 2 scales on axis 1
    for t in m.graph.initializer:
        if t.name == "x_scale":
            t.CopyFrom(init("x_scale", np.array([0.05, 0.05], np.float32)))
        if t.name == "x_zp":
            t.CopyFrom(init("x_zp", np.zeros(2, np.int8)))
    found = ct.check_qdq(m)
    assert found and all(f.severity == WARNING and "per-channel" in f.message for f in found)


# ---------------------------------------------------------------------------- 6. opset
def test_opset_range_and_project_opset():
    (old,) = ct.check_opset(conv_model(opset=11))
    assert old.severity == ERROR and "11" in old.message
    (newer,) = ct.check_opset(conv_model(opset=18))
    assert newer.severity == WARNING
    assert ct.check_opset(conv_model(opset=17)) == []
    assert ct.check_opset(conv_model(opset=21))[0].severity == ERROR


# ---------------------------------------------------------------------------- 7. external data
def test_external_data_is_an_error(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save_model(conv_model(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    found = [f for f in ct.check_file(path) if f.check == "external-data"]
    assert {f.node for f in found} == {"w", "b"} and all(f.severity == ERROR for f in found)
    assert "ext.onnx.data" in found[0].message


# ---------------------------------------------------------------------------- CLI
def test_cli_exit_codes_and_lines_name_the_node(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    onnx.save(make_model([helper.make_node("Unique", ["x"], ["y"], name="uniq_node")],
                         [vi("x", shape=[8])], [vi("y")]), bad)
    assert ct.main([str(bad)]) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("ERROR"))
    assert "uniq_node" in line and "(Unique)" in line and "Fix:" in line
    assert "1 error(s)" in out

    assert ct.main([str(tmp_path / "missing.onnx")]) == 2
    assert "no such file" in capsys.readouterr().err
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf \xff\xfe")
    assert ct.main([str(junk)]) == 2
    assert ct.main([str(tmp_path)]) == 2


def test_cli_json_report(tmp_path, capsys):
    path = tmp_path / "dyn.onnx"
    onnx.save(conv_model(x_shape=["batch", 2, 8, 8]), path)
    assert ct.main([str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["errors"] == 1
    assert report["findings"][0]["node"] == "x" and report["findings"][0]["check"] == "shapes"


def test_add_parser_registers_subcommand(tmp_path):
    import argparse

    path = tmp_path / "clean.onnx"
    onnx.save(conv_model(), path)
    parser = argparse.ArgumentParser(prog="rgbd-convert")
    sub = parser.add_subparsers(dest="cmd", required=True)
    ct.add_parser(sub)
    args = parser.parse_args(["check-trt", str(path), "--allow-dynamic", "--json"])
    assert args.allow_dynamic and args.json
    assert args.func(args) == 0


def test_finding_format():
    f = Finding(ERROR, "conv1", "Conv", "something is wrong.", "do this.", "qdq")
    assert str(f) == "ERROR   conv1 (Conv): something is wrong. Fix: do this. [qdq]"
