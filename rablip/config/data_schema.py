"""The ``data`` section of the config schema: the benchmark, its split files, the knowledge base and
extra pre-training pairs (see :mod:`rablip.config.schema` for the conventions)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rablip.config.checks import ConfigValueError, check_choice, check_positive, check_range

DATASETS = ("okvqa", "vqav2", "aokvqa", "webqa", "infoseek", "evqa", "oven")
"""data.dataset choices: the keys of rablip.benchmarks.BENCHMARKS (a literal here: config sits below
benchmarks; tests/benchmarks/test_registry.py checks that the two agree)."""



@dataclass
class SplitConfig:
    """Files of one split, in the benchmark's official format."""

    path: str = ""
    """Main file: OK-VQA/VQAv2 questions json, A-OKVQA json, WebQA json, InfoSeek jsonl, Encyclopedic-VQA csv."""
    annotations: str = ""
    """OK-VQA/VQAv2 annotations json (empty for test-style splits)."""
    qtypes: str = ""
    """InfoSeek question-type jsonl."""
    image_root: str = ""
    """Directory holding the split's images."""
    image_split: str = ""
    """Image sub-folder and COCO name part, e.g. val2014 (OK-VQA) or val (A-OKVQA -> val2017)."""
    split: str = ""
    """Split name inside a shared file (WebQA's train/val)."""
    image_pattern: str = "{image_id}.jpg"
    """InfoSeek, OVEN: image file name under image_root, formatted with the record's image_id."""
    extra_paths: list[str] = field(default_factory=list)
    """Further files of the split in the same format, read after ``path`` (OVEN: the query file,
    oven_query_val.jsonl, beside the entity file in ``path``: the official score needs both)."""
    entity_labels: str = ""
    """InfoSeek: the split's ``infoseek_{train,val}_withkb.jsonl`` (data_id, entity_id, entity_text): each
    question's entity, which noise-resilient training never draws as its irrelevant snippet."""
    entities: str = ""
    """OVEN: the Wiki6M entity list (Wiki6M_ver_1_0.jsonl.gz or its title-only JSONL) over which the
    generated entity names are mapped to the Wikidata QIDs the official metric scores (exact title,
    else BM25 top-1: rablip.evaluation.entity_linking)."""
    inat_root: str = ""
    """Encyclopedic-VQA: the iNaturalist 2021 directory that the annotation files' file_name entries are under."""
    inat_annotations: list[str] = field(default_factory=list)
    """Encyclopedic-VQA: iNaturalist 2021 annotation files (train.json, val.json) that map an image id to its
    file_name; streamed, only the split's ids kept. Needed when the split has iNaturalist questions."""
    landmarks_root: str = ""
    """Encyclopedic-VQA: the Google Landmarks v2 image directory (images at root/id[0]/id[1]/id[2]/{id}.jpg).
    Needed when the split has Landmarks questions."""


@dataclass
class KBConfig:
    format: str = "jsonl"
    """Input format: jsonl (generic knowledge-base JSONL), wit_tsv, webqa (facts of WebQA json), or evqa_wiki
    (Encyclopedic-VQA's encyclopedic_kb_wiki.json, streamed: one item per section and one per image), or
    m2kr_parquet (a parquet file of M2KR's ``*_passages`` configs, e.g. OKVQA_passages: one text item per
    row, ``passage_id``/``passage_content``/``title``; rablip/data/m2kr_passages.py)."""
    path: str = ""
    """Input file of the knowledge base."""
    root: str = ""
    """KB root directory: relative image paths resolve under it and may not escape it."""
    store_dir: str = ""
    """Output directory of the on-disk Arrow store (built by scripts/build_kb.py)."""
    overwrite: bool = False
    """Replace an existing store at store_dir (only a directory that is a store)."""
    wit_title_column: str = "page_title"
    wit_text_column: str = "reference_description"
    wit_image_column: str = "image_url"
    wit_id_column: str = ""
    """Column holding item ids (empty: ids are <file stem>-<row>)."""
    wit_has_header: bool = True
    webqa_images_tsv: str = ""
    """WebQA imgs.tsv (its imgs.lineidx beside it) for image facts. The store refers to the images by
    id and reads them from this file when they are used: it holds no copy of the TSV."""
    evqa_image_map: str = ""
    """evqa_wiki: a TSV of ``image URL<TAB>path`` (path under data.kb.root) for the pages' images. Empty: images
    stay URLs (kept, but unusable until fetched). Set: mapped images get their local path, unmapped ones are left
    out (their section becomes a text item); an empty file builds a text-only store."""
    extra_paths: list[str] = field(default_factory=list)
    """Further input files in ``format``, read after ``path`` into the same store (WebQA: WebQA_test.json,
    so that the test questions' sources are in the store too; a fact listed in both files is stored once)."""
    on_missing: str = "error"
    """WebQA: what to do with image facts whose image is unusable (id not in imgs.lineidx, a truncated or
    garbled line, a payload that is not an image). Both report them in one message (count, and the first
    few with record guid and image id). error: refuse the build (exit code 2, nothing written); skip:
    leave those facts out of the store."""

    def __post_init__(self) -> None:
        check_choice("data.kb.format", self.format, ("jsonl", "wit_tsv", "webqa", "evqa_wiki", "m2kr_parquet"))
        check_choice("data.kb.on_missing", self.on_missing, ("error", "skip"))


@dataclass
class ExtraPairsConfig:
    """Extra pre-training pairs (any dataset), added to run_pretrain's knowledge-item and question pairs:
    a JSONL file, JSONL shards or WebDataset tar shards (``format``). JSONL: one JSON object per line,
    ``{"image": query image path, "question": text, "item": target}``. ``image`` is relative to the
    file's directory (and stays inside it); ``question`` may be empty or absent: then each epoch draws a random training question that an item of the
    target's kind answers (a text item: a question with a relevant text item; an item with an image:
    one with a relevant image item); ``item`` is the target knowledge item as a knowledge-base JSONL
    record (``id``, ``text``, ``title``, optional ``image`` relative to the file's directory), which need
    not be in the knowledge base. Epoch e's extra pair i is record (e x extra + i) mod N of the file's
    N records, so no record repeats until all were used. Shards (a directory or a brace pattern) are
    streamed instead: each process and DataLoader worker reads shards of its own, in an order that follows
    from the step count, so a resumed run goes on from the sample it stopped at without reading the
    shards it had finished (rablip/data/pair_shards.py, rablip/training/stream_slots.py)."""

    path: str = ""
    """A JSONL file; or a directory of shards (``*.jsonl``, or ``*.tar`` with ``format: webdataset``), or a
    brace pattern such as ``cc3m/{00000..00099}.tar``. Empty: no extra pairs."""
    format: str = "jsonl"
    """jsonl: extra-pairs records, one per line (a file is read whole when the run starts, shards are
    streamed); webdataset: tar shards of image-text samples (an image .jpg/.png/.webp with a .txt caption
    or a .json holding ``caption`` and optionally ``question``, ``title``, ``id``; img2dataset's output),
    the caption being a text target (rablip/data/webdataset_pairs.py). Processes x max(1, data.num_workers)
    must not exceed the number of shards; ``sizes.json`` beside the shards saves counting them."""
    share: float = 0.0
    """Share of all pre-training pairs (real and extra) that are extra pairs, per epoch. 0: none."""

    def __post_init__(self) -> None:
        check_range("data.extra_pairs.share", self.share, 0.0, 0.9)
        check_choice("data.extra_pairs.format", self.format, ("jsonl", "webdataset"))
        if self.share and not self.path:
            raise ConfigValueError("data.extra_pairs.path", "is empty; data.extra_pairs.share > 0 needs the file")


@dataclass
class DataConfig:
    dataset: str = "okvqa"
    """Benchmark format: okvqa, vqav2, aokvqa, webqa, infoseek, oven, evqa."""
    root: str = ""
    """Directory the dataset's files are under: a relative path in data.{train,val,test,replay}.{path,
    annotations,qtypes,image_root,extra_paths,entities,entity_labels,inat_root,inat_annotations,landmarks_root}, data.extra_pairs.path and data.kb.{path,extra_paths,root,store_dir,webqa_images_tsv,evqa_image_map}
    resolves under it (once, when the config is loaded: config.yaml holds the resolved paths). Empty: the
    working directory. Other keys may interpolate it, e.g. ``model.checkpoint: ${data.root}/model``."""
    train: SplitConfig = field(default_factory=SplitConfig)
    val: SplitConfig = field(default_factory=SplitConfig)
    test: SplitConfig = field(default_factory=SplitConfig)
    replay: SplitConfig = field(default_factory=SplitConfig)
    """Fine-tuning: a second training split, in ``data.dataset``'s format, whose questions are answered from
    the image alone (no references) and mixed into training, so that what an earlier stage taught is kept.
    Used when ``replay_share`` > 0."""
    replay_share: float = 0.0
    """Share of the fine-tuning examples taken from ``data.replay`` (its first ones). 0: no replay."""
    kb: KBConfig = field(default_factory=KBConfig)
    extra_pairs: ExtraPairsConfig = field(default_factory=ExtraPairsConfig)
    on_bad_image: str = "error"
    """error: stop at a missing or unreadable image; skip: leave the record out and report it at the end."""
    num_workers: int = 0
    """DataLoader worker processes."""
    max_input_length: int = 256
    """LLM input tokens (references are truncated first). prompt.template=release: the text tokens
    alone (the release's max_txt_len), cut on the left; the image tokens come on top."""
    max_target_length: int = 32
    qformer_max_length: int = 64
    """Q-Former instruction tokens (prompt.template=release: cut on the left)."""

    def __post_init__(self) -> None:
        check_choice("data.dataset", self.dataset, DATASETS)
        check_choice("data.on_bad_image", self.on_bad_image, ("error", "skip"))
        check_positive("data.num_workers", self.num_workers, allow_zero=True)
        check_range("data.replay_share", self.replay_share, 0.0, 0.9)
        if self.replay_share and not self.replay.path:
            raise ConfigValueError("data.replay.path", "is empty; data.replay_share > 0 needs the split to replay")
