"""``metrics.jsonl`` of a run, mirrored to wandb when ``log.wandb`` is on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rablip.config.load import to_dict
from rablip.config.schema import Config
from rablip.utils.io import atomic_write_text


class MetricsLog:
    """Appends one JSON line per record to ``metrics.jsonl`` and mirrors it to wandb when enabled."""

    def __init__(self, cfg: Config, run_dir: Path, enabled: bool, start_step: int = 0) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.wandb = None
        if enabled and self.path.is_file():
            self._drop_records_after(start_step)
        if enabled and cfg.log.wandb:
            import wandb

            self.wandb = wandb.init(project=cfg.log.wandb_project, mode=cfg.log.wandb_mode, dir=str(run_dir),
                                    name=cfg.run.name or run_dir.name, config=to_dict(cfg), resume="allow")

    def _drop_records_after(self, step: int) -> None:
        """Keep the records of steps up to ``step`` (where a resumed run continues): a run killed after
        its last checkpoint logged steps that the resumed run logs again."""
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the kill
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
