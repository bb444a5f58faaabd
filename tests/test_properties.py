"""Property-based tests (hypothesis): the IDX reader and the loss, for any input."""

from __future__ import annotations

import gzip

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mnist_lr.data import DataError, read_idx
from mnist_lr.model import Params, cross_entropy, log_softmax, loss_and_grads

finite_logits = arrays(
    np.float32,
    st.tuples(st.integers(1, 8), st.integers(2, 12)),
    elements=st.floats(-1e4, 1e4, width=32),
)


@given(finite_logits, st.data())
def test_cross_entropy_is_finite_and_non_negative_for_any_logits(scores, data):
    labels = np.array(
        data.draw(
            st.lists(
                st.integers(0, scores.shape[1] - 1), min_size=len(scores), max_size=len(scores)
            )
        )
    )
    loss = cross_entropy(scores, labels)
    assert loss.shape == (len(scores),)
    assert np.isfinite(loss).all()
    assert (loss >= 0).all()


@given(finite_logits)
def test_log_softmax_rows_are_normalised_for_any_logits(scores):
    probabilities = np.exp(log_softmax(scores.astype(np.float64)))
    assert np.allclose(probabilities.sum(axis=1), 1.0)


@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 6), st.integers(1, 5)),
        elements=st.floats(-3, 3, width=32),
    ),
    st.integers(2, 6),
    st.integers(0, 2**16),
)
def test_loss_and_grads_are_finite_and_shaped_like_the_params(images, n_classes, seed):
    rng = np.random.default_rng(seed)
    params = Params(
        rng.standard_normal((images.shape[1], n_classes)).astype(np.float32),
        np.zeros(n_classes, dtype=np.float32),
    )
    labels = rng.integers(0, n_classes, len(images))
    loss, grad_w, grad_b = loss_and_grads(params, images, labels)
    assert np.isfinite(loss) and loss >= 0
    assert grad_w.shape == params.weights.shape and grad_b.shape == params.bias.shape
    # Each row of softmax - one_hot sums to zero, so the bias gradient does too.
    assert abs(float(grad_b.sum())) < 1e-5


def _idx(array: np.ndarray) -> bytes:
    magic = 2049 if array.ndim == 1 else 2051
    return magic.to_bytes(4, "big") + np.asarray(array.shape, ">u4").tobytes() + array.tobytes()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(
    arrays(np.uint8, st.tuples(st.integers(0, 5), st.integers(1, 6), st.integers(1, 6))),
    st.booleans(),
)
def test_read_idx_round_trips_any_image_array(tmp_path, images, compress):
    content = _idx(images)
    path = tmp_path / "images.idx"
    path.write_bytes(gzip.compress(content) if compress else content)
    assert np.array_equal(read_idx(path), images)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=80)
@given(st.binary(max_size=64))
def test_read_idx_rejects_arbitrary_bytes_with_a_data_error(tmp_path, content):
    path = tmp_path / "junk"
    path.write_bytes(content)
    try:
        array = read_idx(path)
    except DataError as error:
        assert str(path.name) in str(error)
    else:
        # Only a well-formed header with a body of exactly the right length parses.
        assert array.size * array.itemsize + 4 + 4 * array.ndim == len(content)
