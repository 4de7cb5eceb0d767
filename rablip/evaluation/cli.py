"""``rablip-score``: score a prediction file with the official metric of its benchmark.

Subcommands: ``okvqa`` (alias ``vqav2``), ``aokvqa``, ``infoseek``, ``webqa``. The scores are
printed as JSON and, with ``--output``, written atomically to a file. A user error (a malformed or
mismatched file) prints one ``error: ...`` line and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from rablip.errors import DataError
from rablip.utils.cli import run_main
from rablip.utils.io import atomic_write_json


def _score_vqa(args: argparse.Namespace) -> dict:
    from rablip.evaluation.vqa_metric import score_vqa_files

    return score_vqa_files(args.questions, args.annotations, args.predictions, lemmatize=args.lemmatize)


def _score_aokvqa(args: argparse.Namespace) -> dict:
    from rablip.evaluation.aokvqa_metric import score_aokvqa_files

    return score_aokvqa_files(args.data, args.predictions)


def _score_infoseek(args: argparse.Namespace) -> dict:
    from rablip.evaluation.infoseek_metric import score_infoseek_files

    return score_infoseek_files(args.references, args.predictions, args.qtypes)


def _score_webqa(args: argparse.Namespace) -> dict:
    from rablip.evaluation.webqa_metric import load_webqa_references, read_webqa_predictions, score_webqa

    questions = load_webqa_references(args.data, split=args.split)
    predictions = read_webqa_predictions(args.predictions, questions)
    fluency_fn = None
    if args.bart_checkpoint is not None:
        from rablip.evaluation.bartscore import BartScorer, fluency

        scorer = BartScorer(args.bart_checkpoint, device=args.device)

        def fluency_fn(answer: str, references: list[str]) -> float:
            return fluency(answer, references, scorer)

    return score_webqa(questions, predictions, fluency_fn)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subcommand per benchmark."""
    parser = argparse.ArgumentParser(prog="rablip-score", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")

    def add(name: str, handler: Callable[[argparse.Namespace], dict], help_text: str, aliases=()) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, aliases=list(aliases))
        sub.set_defaults(handler=handler)
        sub.add_argument("--output", help="also write the scores to this JSON file (atomically)")
        sub.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
        return sub

    vqa = add("okvqa", _score_vqa, "OK-VQA / VQAv2 accuracy (official VQA evaluation)", aliases=("vqav2",))
    vqa.add_argument("--questions", required=True, help="OpenEnded_mscoco_*_questions.json")
    vqa.add_argument("--annotations", required=True, help="mscoco_*_annotations.json")
    vqa.add_argument("--predictions", required=True, help='results file: [{"question_id": int, "answer": str}]')
    vqa.add_argument("--lemmatize", action="store_true",
                     help="lemmatize predictions first (BLIP-2/LAVIS practice; not the official metric)")

    aokvqa = add("aokvqa", _score_aokvqa, "A-OKVQA multiple-choice and direct-answer accuracy")
    aokvqa.add_argument("--data", required=True, help="aokvqa_v1p0_{train,val}.json")
    aokvqa.add_argument("--predictions", required=True,
                        help='{question_id: {"multiple_choice": str, "direct_answer": str}}')

    infoseek = add("infoseek", _score_infoseek, "InfoSeek accuracy (harmonic mean of the unseen splits)")
    infoseek.add_argument("--references", required=True, help="infoseek_val.jsonl")
    infoseek.add_argument("--predictions", required=True, help='JSONL of {"data_id": str, "prediction": str}')
    infoseek.add_argument("--qtypes", help="infoseek_val_qtype.jsonl (adds a per-type breakdown)")

    webqa = add("webqa", _score_webqa, "WebQA retrieval F1, QA-Acc and (with a BART checkpoint) QA-FL / QA")
    webqa.add_argument("--data", required=True, help="WebQA_train_val.json (or a file with Keywords_A)")
    webqa.add_argument("--predictions", required=True, help='{guid: {"sources": [ids], "answer": str}}')
    webqa.add_argument("--split", help="score only records of this split (e.g. val)")
    webqa.add_argument("--bart-checkpoint", help="local transformers-format BART dir for QA-FL")
    webqa.add_argument("--device", default="cpu", help="device for the BART model (default cpu)")
    return parser


def score_main(argv: list[str]) -> int:
    """Parse ``argv``, score, print the JSON and write ``--output``; returns the exit code."""
    args = build_parser().parse_args(argv)
    scores = args.handler(args)
    if args.output:
        try:
            atomic_write_json(args.output, scores)
        except OSError as err:
            raise DataError(f"cannot write the scores to {args.output}: {err}. Choose a writable path.") from None
    json.dump(scores, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``rablip-score``): user errors exit 2 with one message."""
    run_main(score_main, argv)


if __name__ == "__main__":
    main()
