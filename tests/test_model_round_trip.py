"""Every real model prints, parses back equal, and saves/loads with its constants bit for bit."""

import numpy as np
import pytest

from qpass.frontend import import_onnx
from qpass.interpreter import interpret
from qpass.ir import load, parse_graph, print_graph, save
from qpass.tools.demo import bundled_model_path
from test_frontend import REAL_MODELS


@pytest.fixture(scope="module", params=sorted(REAL_MODELS) + ["digits_cnn"])
def model(request):
    if request.param == "digits_cnn":
        return import_onnx(str(bundled_model_path()))
    path_of, input_name, shape, _, _ = REAL_MODELS[request.param]
    return import_onnx(path_of(), {input_name: shape})


def test_print_parse_round_trip(model):
    text = print_graph(model)
    back = parse_graph(text)
    assert back == model
    assert print_graph(back) == text


def test_save_load_with_constants(model, tmp_path):
    save(model, tmp_path / "m.qir")
    back = load(tmp_path / "m.qir")
    assert back == model
    for a, b in zip(model.constants(), back.constants()):
        assert a.data.tobytes() == b.data.tobytes(), a.name
    rng = np.random.default_rng(0)
    feeds = {v.name: rng.standard_normal(v.type.shape).astype(np.float32) for v in model.inputs}
    for name, value in interpret(model, feeds).items():
        assert np.array_equal(interpret(back, feeds)[name], value)
