import socket

import numpy as np
import pytest

from aloekit.personas import SimilarityFilter, get_embedder
from aloekit.personas.embedding import nearest_neighbour_similarity
from tests.helpers import BagOfWordsEmbedder

BASE = "He is a 33-year-old mechanical engineer who enjoys running and brewing beer with his friends."
PARAPHRASE = "He is a 33-year-old mechanical engineer who likes running and brewing beer with his friends."
DISTINCT = "She is a retired opera singer living on a houseboat; she paints seascapes and keeps goats."


def test_filter_rejects_near_duplicate_and_keeps_distinct_text():
    embedder = BagOfWordsEmbedder()
    pool = SimilarityFilter(embedder.embed([BASE]), threshold=0.6)
    assert pool.admit(embedder.embed([PARAPHRASE, DISTINCT])) == [False, True]
    assert pool.size == 2


def test_candidates_in_one_batch_are_checked_against_each_other():
    embedder = BagOfWordsEmbedder()
    pool = SimilarityFilter(None, threshold=0.6)
    assert pool.admit(embedder.embed([BASE, PARAPHRASE, DISTINCT])) == [True, False, True]


def test_pool_matrix_grows_without_losing_rows():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pool = SimilarityFilter(vectors[:10], threshold=1.0)  # admits everything
    assert all(pool.admit(vectors[10:]))
    np.testing.assert_array_equal(pool.pool, vectors)


def test_nearest_neighbour_similarity():
    vectors = np.array([[1, 0], [0.8, 0.6], [0, 1]], dtype=np.float32)
    np.testing.assert_allclose(nearest_neighbour_similarity(vectors), [0.8, 0.8, 0.6])


@pytest.mark.integration
def test_real_minilm_rejects_paraphrase_keeps_distinct():
    embedder = get_embedder("minilm")
    paraphrase = "A 33-year-old mechanical engineer, he loves to run and to brew beer with friends."
    vectors = embedder.embed([BASE, paraphrase, DISTINCT])
    assert vectors.shape == (3, 384)
    pool = SimilarityFilter(vectors[:1], threshold=0.6)
    assert pool.admit(vectors[1:]) == [False, True]


@pytest.mark.integration
def test_loading_minilm_never_reaches_for_a_hub(monkeypatch):
    # Whatever the environment says: huggingface_hub reads HF_HUB_OFFLINE only when it is first imported.
    def connect(self, address):
        raise AssertionError(f"the embedder opened a connection to {address}")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket.socket, "connect", connect)
    assert get_embedder("minilm").embed(["a persona"]).shape == (1, 384)
