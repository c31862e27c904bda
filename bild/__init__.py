"""BiLD: a small model drafts, a large model falls back and rolls back (Kim et al. 2023)."""

from bild.config import GenerationConfig
from bild.engine import generate, generate_single
from bild.errors import BildError
from bild.pair import ModelPair
from bild.policy import DraftStep, Policy, Verdict, Verification
from bild.stats import GenerationResult, GenerationStats

__all__ = [
    "BildError", "DraftStep", "GenerationConfig", "GenerationResult", "GenerationStats",
    "ModelPair", "Policy", "Verdict", "Verification", "generate", "generate_single",
]
