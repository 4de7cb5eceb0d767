"""rablip: retrieval-augmented vision-language question answering (RA-BLIP, RORA-VLM)."""

__version__ = "0.1.0"
