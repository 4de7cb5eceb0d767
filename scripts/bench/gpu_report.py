"""The Markdown tables of ``scripts/bench/gpu.py``'s result (what ``DIR/gpu.md`` holds)."""

from __future__ import annotations


def _cell(value: float | str | None, digits: int | None = None) -> str:
    """A number (``digits`` decimals, default: 3 significant digits, whole numbers from 100 on), a text as it
    is, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if digits is not None:
        return f"{value:.{digits}f}"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _finetune(section: dict) -> list[str]:
    peak = section["peak_tflops"]
    lines = [f"### 1. Fine-tuning step (batch {section['batch']}, median of {section['rounds']} rounds after "
             f"{section['warmup']} warm-up, multi_image {section['multi_image']}, bf16 autocast, AdamW; "
             + (f"peak {peak:.0f} bf16 TFLOPS)" if peak else "peak FLOPS unknown: no MFU)"), "",
             "| model | k | LLM input tokens / example | step ms | model GFLOP / step | TFLOP/s | MFU % |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in section["rows"]:
        mfu = None if row["mfu"] is None else 100 * row["mfu"]
        lines.append(f"| {row['model']} | {row['k']} | {_cell(row['tokens_per_example']['llm_input'], 1)} | "
                     f"{_cell(1000 * row['step_seconds'])} | {row['flops_per_step'] / 1e9:.4g} | "
                     f"{row['tflops_per_second']:.3g} | {_cell(mfu, 1)} |")
    losses = section["k0_eval_loss"]
    lines += ["", f"k = 0 loss before training, eval mode: rablip {losses['rablip']:.4f}, transformers "
              f"{losses['transformers']:.4f}."]
    return lines


def _generate(section: dict) -> list[str]:
    lines = [f"### 2. Evaluation ({section['num_beams']} beams, max_new_tokens {section['max_new_tokens']}, "
             f"{section['questions']} questions in batches of {section['batch']}, median of {section['rounds']} "
             "rounds)", "", "| model | k | questions / s |", "|---|---:|---:|"]
    lines += [f"| {row['model']} | {row['k']} | {_cell(row['questions_per_second'])} |" for row in section["rows"]]
    return lines


def _kb(section: dict) -> list[str]:
    return [f"### 3. KB encoding (fusion encoder, {section['fusion_layers']} fusion layers, {section['embed_dim']}-d, "
            "image+text items)", "", "| items | batch | seconds | items / s |", "|---:|---:|---:|---:|",
            f"| {section['items']} | {section['batch']} | {_cell(section['seconds'])} | "
            f"{_cell(section['items_per_second'])} |"]


def _faiss(section: dict) -> list[str]:
    batches = section["batches"]
    head = "| index | items | width | build s CPU | build s GPU | " + " | ".join(
        f"batch {b} ms CPU | batch {b} ms GPU" for b in batches) + " |"
    lines = [f"### 4. FAISS (inner product, k = {section['k']}, median of {section['repeats']} searches, "
             f"{section['faiss_threads']} CPU threads)", "", head, "|---|---:|---:|" + "---:|" * (2 + 2 * len(batches))]
    for row in section["rows"]:
        name = row["index"]
        if "settings" in row:
            s = row["settings"]
            name += f" (nlist {s['nlist']}, m {s['m']}, nbits {s['nbits']}, nprobe {s['nprobe']})"
        cells = [name, str(row["items"]), str(row["width"]), _cell(row["build_seconds"]["cpu"]),
                 _cell(row["build_seconds"]["gpu"])]
        for b in batches:
            search = row["search_ms"][f"batch_{b}"]
            cells += [_cell(search["cpu"]), _cell(search["gpu"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict) -> str:
    """The report: a header naming device and versions, then one table per section measured."""
    size = "reduced layout: a smoke run, not a performance figure" if result["reduced"] else "published size"
    versions = result["versions"]
    parameters = result["checkpoint"]["parameters"] if "checkpoint" in result else None
    lines = [f"## GPU figures on {result['device']}", "",
             f"torch {versions['torch']}, transformers {versions['transformers']}, faiss {versions['faiss']}"
             + (f", CUDA {versions['cuda']}" if versions["cuda"] else "") + f"; {result['model']} ({size}"
             + (f", {parameters / 1e9:.2f}B parameters" if parameters and parameters >= 1e9 else
                f", {parameters / 1e6:.1f}M parameters" if parameters else "")
             + f"), config {result['config']}; whole run {result['wall_seconds']:.0f} s.", ""]
    for key, render in (("finetune", _finetune), ("generate", _generate), ("kb_encoding", _kb), ("faiss", _faiss)):
        if key in result:
            lines += render(result[key]) + [""]
    if result["skipped"]:
        lines.append(f"Skipped: {', '.join(result['skipped'])}.")
    return "\n".join(lines).rstrip() + "\n"
