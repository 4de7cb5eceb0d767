"""The synthetic knowledge-VQA world: entities with visible attributes and hidden facts, rendered
question images, a knowledge base, OK-VQA-format splits with unseen entities, a knowledge-edit mode,
and tokenizers trained on the world's texts. Entry point: ``scripts/make_synthetic.py``.

Modules: ``vocab`` (answer vocabularies), ``entities`` (sampling, KB texts), ``render`` (drawing),
``questions`` (templates, OK-VQA records), ``files`` (layout, JSON I/O), ``world`` (build),
``edit`` (knowledge edit), ``world_tokenizers`` (tokenizer training).
"""
