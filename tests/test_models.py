"""The named architectures: the one table of their natural inputs, and the builders' defaults that match it."""
import inspect

import numpy as np
import pytest

from xpcnn.models import MODEL_INPUTS, MODELS, build_model, cifar_resnet


@pytest.mark.parametrize("name", ["digits-cnn", "lenet", "vgg-small", "allcnn-gap"])
def test_builder_defaults_are_the_table_of_natural_inputs(name):
    params = inspect.signature(MODELS[name]).parameters
    c, size, classes = MODEL_INPUTS[name]
    assert (params["in_channels"].default, params["image_size"].default, params["num_classes"].default) == (
        c, size, classes)
    assert len(MODELS[name]()) == len(MODELS[name](c, classes, size))


def test_every_model_has_its_natural_input_and_takes_it():
    assert set(MODEL_INPUTS) == set(MODELS)
    params = inspect.signature(cifar_resnet).parameters
    assert (params["in_channels"].default, params["image_size"].default, params["num_classes"].default) == (
        MODEL_INPUTS["resnet20"])
    for name, (c, size, classes) in MODEL_INPUTS.items():
        model = build_model(name, c, classes, size, backend="numpy", dtype="float64", seed=0)
        model.eval()
        assert model(np.zeros((2, c, size, size))).shape == (2, classes)
