"""Weight averaging: the mean of the epochs' weights, with batch norm measured again on real slices."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mriseg.model import UNetConfig, create_model
from mriseg.training.averaging import average_state_dicts, recompute_batch_norm

pytestmark = pytest.mark.slow


def test_average_is_the_mean_of_floats_and_keeps_the_last_counter():
    first = {"weight": torch.tensor([1.0, 2.0]), "num_batches_tracked": torch.tensor(3)}
    second = {"weight": torch.tensor([3.0, 6.0]), "num_batches_tracked": torch.tensor(7)}
    averaged = average_state_dicts([first, second])
    assert torch.equal(averaged["weight"], torch.tensor([2.0, 4.0]))
    assert averaged["num_batches_tracked"].item() == 7
    with pytest.raises(ValueError, match="no weights"):
        average_state_dicts([])


def test_averaging_two_models_gives_a_working_model():
    torch.manual_seed(0)
    models = [create_model(UNetConfig(base_width=4, depth=2)) for _ in range(2)]
    averaged = create_model(UNetConfig(base_width=4, depth=2))
    averaged.load_state_dict(average_state_dicts([model.state_dict() for model in models]))
    expected = (models[0].head.weight + models[1].head.weight) / 2
    assert torch.allclose(averaged.head.weight, expected)
    assert averaged.eval()(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_batch_norm_statistics_are_the_exact_average_over_the_data():
    torch.manual_seed(0)
    model = create_model(UNetConfig(base_width=4, depth=2))
    images = torch.randn(12, 1, 32, 32) * 3 + 5
    first_norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    hook = first_norm.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach()))
    recompute_batch_norm(model, DataLoader(TensorDataset(images, images), batch_size=4), torch.device("cpu"))
    hook.remove()
    inputs = torch.cat(seen)  # what the first batch-norm layer saw, over the three batches
    assert torch.allclose(first_norm.running_mean, inputs.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not model.training and first_norm.momentum == 0.1
    batch_variances = torch.stack([batch.var(dim=(0, 2, 3)) for batch in seen])
    assert torch.allclose(first_norm.running_var, batch_variances.mean(0), rtol=1e-4)
    assert np.isfinite(model(images[:2]).detach().numpy()).all()
