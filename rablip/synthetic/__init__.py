"""The synthetic knowledge-VQA world, a plug-in: entities with visible attributes and hidden facts,
rendered question images, a knowledge base, OK-VQA-format splits with unseen entities (their question
types are the report groups), a knowledge-edit mode, tokenizers trained on the world's texts, the tiny
generator with its warm-ups, and invented-creature pre-training pairs. Nothing else in rablip imports
it; ``scripts/make_synthetic.py`` builds everything (:func:`rablip.synthetic.make.make_synthetic`) and
the stages read the result through ``configs/data/synthetic.yaml`` like any dataset.

Modules: ``settings`` (what a build takes), ``make`` (the build), ``vocab`` (answer vocabularies),
``entities`` (sampling, KB texts), ``render`` (drawing), ``questions`` (templates, OK-VQA records),
``files`` (layout, JSON I/O), ``world`` (the world's files), ``aligning`` (the align/ split), ``edit``
(knowledge edit), ``world_tokenizers`` and ``tokenizer_training`` (tokenizers), ``build`` and
``tiny_model`` (the tiny checkpoint), ``warmup``, ``viewing``, ``vision_warmup``, ``reading``,
``llm_warmup`` (warm-ups), ``describing`` (the extra pre-training pairs).
"""
