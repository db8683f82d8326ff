"""Hostile prototxt files: sizes Caffe refuses, names megabytes long or holding control characters,
thousands of layers under one name; then fuzzing with mutants of the zoo's prototxt files.

A seeded mutator edits real files the way hostile or broken files differ from good ones: hostile
numbers (0, negative, huge, nan), deleted, duplicated and swapped lines and layer blocks, other
field names and layer types, stray punctuation and control characters, cut files, odd strings,
and parameter lines that Caffe refuses or that only forks know. Every mutant must either compile
or raise a :class:`CompileError` whose message is one line naming the file; a mutant that compiles
to a small network must also build and run at its declared input shape. Speed is measured in
benchmarks/bench_prototxt.py, never asserted here; memory and work counts are.
"""

from __future__ import annotations

import random
import re
import tracemalloc
from pathlib import Path

import pytest
import torch

from automtl.compiler.codegen import codegen
from automtl.compiler.errors import CompileError
from automtl.compiler.frontends.prototxt import MAX_NAME, SUPPORTED_TYPES, from_text, parse
from automtl.compiler.ir import Graph

ROOT = Path(__file__).resolve().parents[1]
ZOO = sorted((ROOT / "backbones").glob("*.prototxt"))
# The fork layers and options read on top of BVLC: LRN within a channel, ShuffleChannel, ceil_mode.
FORKS = """name: "forks"
input: "data"
input_shape { dim: 1 dim: 3 dim: 16 dim: 16 }
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 }
}
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1"
  top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 ceil_mode: false }
}
layer {
  name: "norm1"
  type: "LRN"
  bottom: "pool1"
  top: "norm1"
  lrn_param { local_size: 3 alpha: 5e-05 beta: 0.75 norm_region: WITHIN_CHANNEL }
}
layer {
  name: "gconv"
  type: "Convolution"
  bottom: "norm1"
  top: "gconv"
  convolution_param { num_output: 8 kernel_size: 1 group: 2 }
}
layer {
  name: "shuffle"
  type: "ShuffleChannel"
  bottom: "gconv"
  top: "shuffle"
  shuffle_channel_param { group: 2 }
}
layer {
  name: "relu"
  type: "ReLU"
  bottom: "shuffle"
  top: "shuffle"
}
"""
CORPUS = {path.stem: path.read_text() for path in ZOO + sorted((ROOT / "tests/data/prototxt").glob("*.prototxt"))}
CORPUS["forks"] = FORKS
MUTANTS_PER_FILE = 40
RUN_FLOPS = 20_000_000  # mutants that compile to at most this many FLOPs are also run

NUMBERS = [
    "0", "-1", "1", "2", "3", "5", "-7", "4294967295", "4294967296", "2147483648", "99999999999999999999",
    "1e9", "0.5", "-0.5", "nan", "inf", "-inf", "0x10", "1e-45", "00", "+1", "1.", ".5e",
]  # fmt: skip
PARAM_LINES = [
    "num_output: 0", "num_output: 3", "group: 0", "group: 3", "group: 2", "kernel_size: 0", "kernel_size: 99",
    "stride: 0", "pad: 9", "dilation: 0", "dilation: 3", "axis: -9", "axis: 2", "axis: 0", "ceil_mode: false",
    "ceil_mode: true", "round_mode: FLOOR", "norm_region: WITHIN_CHANNEL", "local_size: 0", "local_size: 4",
    "local_size: 3", "dropout_ratio: 1.5", "dropout_ratio: -1", "negative_slope: nan", "global_pooling: true",
    "bias_term: false", "eps: -1", "slice_point: 1", "slice_point: 0", "coeff: 2", "operation: PROD",
    "pool: STOCHASTIC", "pool: AVE", "engine: CUDNN", 'bottom: "data"', 'top: "data"', 'top: "x"',
    'bottom: "nowhere"', "shuffle_channel_param { group: 0 }", "shuffle_channel_param { group: 2 }",
    "shuffle_channel_param { group: 5 }", "include { phase: TRAIN }", "exclude { phase: TEST }",
    "reshape_param { shape { dim: 0 dim: -1 dim: 0 dim: 0 dim: 0 } }", "reshape_param { shape { dim: 0 dim: -1 } }",
    "input_param { shape { dim: 1 } }", "lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL }",
    "interp_param { shrink_factor: 0 }", "interp_param { zoom_factor: 2 }", "crop_param { offset: 1000 }",
    "dummy_data_param { num: 1 }", "blobs { data: 1 }", "inplace: true", "momentum: 0.1", "moving_average_fraction: 2",
    "concat_dim: 5", "flatten_param { axis: 3 end_axis: 1 }", "clip_param { min: 1 max: 0 }", "power: 2", "shift: 1",
    "kernel_h: 3", "pad_w: 1", "stride_h: 0", "kernel_w: 0", "num_output: 1000000000000",
]  # fmt: skip
STRINGS = ['""', '"data"', '"a\\nb"', '"\\x00"', '"\u00e9t\u00e9"', '"' + "n" * 5000 + '"', "'single'", '"un']
STRINGS += ['"\\"q\\""', '"' + "m" * 5000 + '\\t"']
CHARS = list('{}:"#<>[],;\\\n\t\'') + ["\x00", "\x7f", "\u2028", "\ufeff", "\U0001f600"]
TYPES = [*SUPPORTED_TYPES, "Convolutoin", "", "Input", "layer", "ShuffleChannel", "LRN", "Exp", "Threshold"]

_NUMBER = re.compile(r"(?<=: )-?[0-9][0-9.e+-]*")
_WORD = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")
_STRING = re.compile(r'"[^"\n]*"')


def _lines(text: str) -> list[str]:
    return text.split("\n")


def _block_starts(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if line.startswith("layer {")]


def _block(lines: list[str], start: int) -> tuple[int, int]:
    """The line range of the top-level block starting at ``start`` (its closing brace at column 0)."""
    end = next((j for j in range(start + 1, len(lines)) if lines[j] == "}"), len(lines) - 1)
    return start, end + 1


def _sub(pattern: re.Pattern[str], text: str, rng: random.Random, choices: list[str]) -> str:
    matches = list(pattern.finditer(text))
    if not matches:
        return text
    m = rng.choice(matches)
    return text[: m.start()] + rng.choice(choices) + text[m.end() :]


def mutate(text: str, rng: random.Random) -> str:
    """One random edit of ``text``."""
    lines = _lines(text)
    op = rng.randrange(12)
    if op == 0:
        return _sub(_NUMBER, text, rng, NUMBERS)
    if op == 1 and len(lines) > 1:
        del lines[rng.randrange(len(lines))]
    elif op == 2:
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
    elif op == 3:
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif op in (4, 5) and _block_starts(lines):
        lo, hi = _block(lines, rng.choice(_block_starts(lines)))
        block = lines[lo:hi]
        if op == 4:  # duplicate a layer (same name, same tops), possibly many times
            lines[hi:hi] = block * rng.choice([1, 1, 2, 20])
        else:  # move a layer elsewhere
            del lines[lo:hi]
            at = rng.randrange(len(lines) + 1)
            lines[at:at] = block
    elif op == 6:
        words = _WORD.findall(text)
        return _sub(_WORD, text, rng, words + ["foo", "layers", "layer", "input", "true", "TEST"])
    elif op == 7:
        at = rng.randrange(len(text) + 1)
        return text[:at] + rng.choice(CHARS) + text[at:]
    elif op == 8:
        return text[: rng.randrange(len(text) + 1)]
    elif op == 9:
        return _sub(_STRING, text, rng, STRINGS + _STRING.findall(text)[:50])
    elif op == 10:
        types = [i for i, line in enumerate(lines) if line.strip().startswith("type:")]
        if types:
            i = rng.choice(types)
            lines[i] = f'  type: "{rng.choice(TYPES)}"'
    else:
        params = [i for i, line in enumerate(lines) if line.rstrip().endswith("{")]
        i = rng.choice(params) + 1 if params and rng.random() < 0.8 else rng.randrange(len(lines) + 1)
        lines.insert(i, "    " + rng.choice(PARAM_LINES))
    return "\n".join(lines)


def compile_or_refuse(text: str, file: str) -> Graph | None:
    """The graph, or None after checking the CompileError is one line naming the file."""
    try:
        return from_text(text, file)
    except CompileError as exc:
        msg = str(exc)
        assert msg.startswith(file), msg[:300]
        assert "\n" not in msg and "\r" not in msg and "\u2028" not in msg, msg[:300]
        assert len(msg) < 2000, msg[:300]
        return None


def _run(graph: Graph) -> None:
    """Build and run a compiled mutant at its declared shapes; outputs have the inferred shapes."""
    gm = codegen(graph).eval()
    xs = [torch.randn(graph[name].shape) for name in graph.inputs]
    with torch.no_grad():
        out = gm(*xs)
    outs = out if isinstance(out, (tuple, list)) else [out]
    if isinstance(out, dict):
        outs = list(out.values())
    assert [tuple(o.shape) for o in outs] == [graph[o].shape for o in graph.outputs]


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_mutants_compile_or_raise_one_line_compile_errors(name: str) -> None:
    text = CORPUS[name]
    assert compile_or_refuse(text, f"{name}.prototxt") is not None  # the original compiles
    rng = random.Random(f"automtl-fuzz-{name}")
    outcomes = {"compiled": 0, "refused": 0, "ran": 0}
    for i in range(MUTANTS_PER_FILE):
        mutant = text
        for _ in range(rng.choice([1, 1, 2, 3])):
            mutant = mutate(mutant, rng)
        file = f"{name}-mutant{i}.prototxt"
        try:
            graph = compile_or_refuse(mutant, file)
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - the point: report any other exception with its mutant
            pytest.fail(f"{file}: {type(exc).__name__}: {exc}\n--- mutant diff ---\n{_diff(text, mutant)}")
        if graph is None:
            outcomes["refused"] += 1
            continue
        outcomes["compiled"] += 1
        if graph.flops <= RUN_FLOPS:
            try:
                _run(graph)
            except Exception as exc:  # noqa: BLE001
                pytest.fail(f"{file} compiled but does not run: {type(exc).__name__}: {exc}\n{_diff(text, mutant)}")
            outcomes["ran"] += 1
    # the mutator must exercise both outcomes, or the test checks nothing
    assert outcomes["refused"] > 0 and outcomes["compiled"] > 0, outcomes


def _diff(a: str, b: str) -> str:
    import difflib

    return "\n".join(list(difflib.unified_diff(a.split("\n"), b.split("\n"), lineterm="", n=1))[:40])[:3000]


# ----------------------------------------------------------------------------- hostile values
HEAD = 'name: "t"\ninput: "data"\ninput_dim: 1\ninput_dim: 6\ninput_dim: 8\ninput_dim: 8\n'


def one_layer(type_: str, params: str, name: str = "bad", bottom: str = "data") -> str:
    return HEAD + f'layer {{\n  name: "{name}"\n  type: "{type_}"\n  bottom: "{bottom}"\n  top: "out"\n  {params}\n}}\n'


def refusal(text: str) -> str:
    with pytest.raises(CompileError) as info:
        from_text(text, "hostile.prototxt")
    return str(info.value)


CONV = "convolution_param {{ num_output: 4 kernel_size: 3 {} }}"


@pytest.mark.parametrize(
    ("type_", "params", "reason"),
    [
        ("Convolution", "convolution_param { num_output: 0 kernel_size: 1 }", "convolution_param.num_output is 0"),
        ("Deconvolution", "convolution_param { num_output: 0 kernel_size: 2 }", "convolution_param.num_output is 0"),
        ("Convolution", "convolution_param { num_output: 4 kernel_size: 0 }", "convolution_param.kernel_size is 0"),
        ("Convolution", "convolution_param { num_output: 4 kernel_h: 3 kernel_w: 0 }",
         "convolution_param.kernel_size is [3, 0]"),
        ("Convolution", CONV.format("stride: 0"), "convolution_param.stride is 0"),
        ("Convolution", CONV.format("stride_h: 1 stride_w: 0"), "convolution_param.stride is [1, 0]"),
        ("Convolution", CONV.format("dilation: 0"), "convolution_param.dilation is 0"),
        ("Convolution", CONV.format("group: 0"), "convolution_param.group is 0"),
        ("InnerProduct", "inner_product_param { num_output: 0 }", "inner_product_param.num_output is 0"),
        ("Pooling", "pooling_param { kernel_size: 0 }", "pooling_param.kernel_size is 0"),
        ("Pooling", "pooling_param { kernel_size: 2 stride: 0 }", "pooling_param.stride is 0"),
        ("ShuffleChannel", "shuffle_channel_param { group: 0 }", "shuffle_channel_param.group is 0"),
    ],
)  # fmt: skip
def test_zero_sizes_are_refused_naming_the_field_layer_and_line(type_: str, params: str, reason: str) -> None:
    msg = refusal(one_layer(type_, params))
    assert msg == f"hostile.prototxt:7: {type_} 'bad': {reason}; it must be positive"


@pytest.mark.parametrize(
    ("type_", "params", "reason"),
    [
        ("Convolution", CONV.format("group: 4"), "convolution_param.group 4 must divide both the input channels (6)"),
        ("Convolution", "convolution_param { num_output: 3 kernel_size: 1 group: 2 }",
         "convolution_param.group 2 must divide both the input channels (6) and num_output (3)"),
        ("ShuffleChannel", "shuffle_channel_param { group: 4 }", "group 4 does not divide the 6 input channels"),
        ("BatchNorm", "batch_norm_param { eps: -0.5 }", "batch_norm_param.eps -0.5 must not be negative"),
        ("Dropout", "dropout_param { dropout_ratio: 1.5 }", "dropout_param.dropout_ratio 1.5 must be in [0, 1)"),
        ("Dropout", "dropout_param { dropout_ratio: -1 }", "dropout_param.dropout_ratio -1.0 must be in [0, 1)"),
        ("Interp", "interp_param { shrink_factor: 0 }", "shrink_factor 0 must be at least 1"),
        ("Reshape", "reshape_param { shape { dim: 0 dim: 0 dim: 0 dim: 0 dim: 0 } }",
         "copies (0) an axis the 4-d input lacks"),
        ("Convolution", "convolution_param { num_output: 4 kernel_size: 9 }", "output would be empty"),
        ("Input", "input_param { shape { dim: 1 dim: 0 } }", "non-positive dimension"),
    ],
)  # fmt: skip
def test_sizes_caffe_refuses_are_refused_naming_the_layer_and_line(type_: str, params: str, reason: str) -> None:
    msg = refusal(one_layer(type_, params))
    assert msg.startswith(f"hostile.prototxt:7: {type_} 'bad': ") and reason in msg, msg


def test_dummy_data_without_its_sizes_is_refused() -> None:
    text = 'layer { name: "d" type: "DummyData" top: "data" dummy_data_param { num: 1 } }\n'
    text += 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n'
    assert refusal(text) == (
        "hostile.prototxt:1: DummyData 'd': dummy_data_param gives num but not channels, height and width"
    )


# ----------------------------------------------------------------------------- hostile names
def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    except CompileError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_a_name_megabytes_long_is_refused_in_memory_linear_in_its_size() -> None:
    """The old string pattern kept ~140 bytes of regex stack per character of a quoted string."""
    size = 2 << 20
    text = one_layer("ReLU", "", name="n" * size)
    msg = refusal(text)
    assert msg.startswith("hostile.prototxt:7: ReLU 'nnnn") and len(msg) < 300
    assert msg.endswith(f"({size:,} characters)': the layer name is {size:,} characters long (at most {MAX_NAME:,})")
    assert _peak(lambda: from_text(text, "hostile.prototxt")) < 4 * len(text)
    long_top = HEAD + 'layer { name: "r" type: "ReLU" bottom: "data" top: "' + "t" * size + '" }\n'
    assert f"is {size:,} characters long" in refusal(long_top)


def test_a_long_string_in_an_ignored_field_parses_in_linear_memory() -> None:
    filler = "x" * (2 << 20)
    for params in (
        f'convolution_param {{ num_output: 2 kernel_size: 1 weight_filler {{ type: "{filler}" }} }}',
        f'convolution_param {{ num_output: 2 kernel_size: 1 weight_filler {{ type: "{filler}\\t" }} }}',  # fallback
    ):
        text = one_layer("Convolution", params)
        graph = from_text(text, "hostile.prototxt")
        assert graph["bad"].shape == (1, 2, 8, 8)
        assert _peak(lambda text=text: parse(text, "hostile.prototxt")) < 8 * len(text)


def test_a_whole_file_on_one_line_parses_in_memory_linear_in_its_size() -> None:
    """Tokens are listed a block of lines at a time; a file of one long line is streamed instead."""
    text = HEAD.replace("\n", " ") + 'layer { name: "r" type: "ReLU" bottom: "data" top: "data" } ' * 20_000
    net, lines = parse(text, "hostile.prototxt")
    assert len(net.layer) == 20_000 and lines["layer"][-1] == 1
    assert _peak(lambda: parse(text, "hostile.prototxt")) < 2 * len(text)


def test_control_characters_in_names_are_escaped_in_one_line_messages() -> None:
    msg = refusal(one_layer("ReLU", "", name="a\\nb\\x00", bottom="missing\\nblob"))
    assert msg == (
        "hostile.prototxt:7: ReLU 'a\\nb\\x00': missing bottom 'missing\\nblob': no earlier layer or input produces it"
    )
    assert "\n" not in msg


def test_a_parse_error_quotes_at_most_a_few_hundred_characters() -> None:
    msg = refusal(one_layer("ReLU", "w" * 100_000 + ": 1"))
    assert msg.startswith("hostile.prototxt:12: ReLU 'bad': cannot parse the prototxt (column 3)")
    assert len(msg) < 500 and "(100,0" in msg


def test_thousands_of_layers_under_one_name_are_named_apart_in_linear_work(monkeypatch) -> None:
    """De-duplicating names probes the graph O(1) times per layer (it used to probe n times)."""
    n = 3000
    body = 'layer { name: "act_2" type: "ReLU" bottom: "data" top: "data" }\n'
    body += 'layer { name: "act" type: "ReLU" bottom: "data" top: "data" }\n' * n
    probes = 0
    contains = Graph.__contains__

    def counting(self: Graph, name: object) -> bool:
        nonlocal probes
        probes += 1
        return contains(self, name)

    monkeypatch.setattr(Graph, "__contains__", counting)
    graph = from_text(HEAD + body, "hostile.prototxt")
    names = [node.name for node in graph][1:]
    assert names[:4] == ["act_2", "act", "act_1", "act_3"] and len(set(names)) == n + 1
    assert names[-1] == f"act_{n}"
    assert probes < 10 * n
