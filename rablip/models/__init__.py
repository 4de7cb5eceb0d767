"""The RA-BLIP generator model: composition, config, loading and conversion."""

from rablip.models.config import RABlipConfig
from rablip.models.rablip import RABlipForConditionalGeneration, RABlipOutput

__all__ = ["RABlipConfig", "RABlipForConditionalGeneration", "RABlipOutput"]
