"""Small models of real architectures for tests, docs and benchmarks: `make_model` (a random
model of a family, saved as a folder `transformers` loads), `make_tokenizer` (a word-level
tokenizer over the suites' words) and `make_planted_model` (bias neurons planted by
construction, with their ground truth). Layer: may import `measurement`, `inputs` and the
foundation modules, like the store.
"""

from fairaudit.testing.models import FAMILIES, make_model, make_tokenizer, rotate_residual_stream, suite_words
from fairaudit.testing.planted import GroundTruth, PlantedNeuron, make_planted_model

__all__ = [
    "FAMILIES",
    "GroundTruth",
    "PlantedNeuron",
    "make_model",
    "make_planted_model",
    "make_tokenizer",
    "rotate_residual_stream",
    "suite_words",
]
