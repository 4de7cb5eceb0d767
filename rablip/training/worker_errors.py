"""User errors raised inside DataLoader workers, carried to the main process as values.

torch re-raises a worker's exception in the main process with the worker's traceback pasted into
its message, so a missing image would reach the user as a traceback even though it is a
:class:`~rablip.errors.RablipError`. :class:`GuardedDataset` and :func:`guarded_collate` return
the error as a :class:`WorkerUserError` instead, and :func:`raise_if_user_error` raises it again,
with its own message, in the main process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from rablip.errors import RablipError


class WorkerUserError:
    """A RablipError's type and message, picklable across the worker boundary."""

    def __init__(self, error: RablipError) -> None:
        self.error_type = type(error)
        self.message = str(error)

    def reraise(self) -> None:
        try:
            error = self.error_type(self.message)
        except TypeError:  # a subclass with another constructor
            error = RablipError(self.message)
        raise error from None


class GuardedDataset(Dataset):
    """``dataset`` whose items are a :class:`WorkerUserError` where reading them raised a RablipError."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.dataset[key]
        except RablipError as error:
            return WorkerUserError(error)


def guarded_collate(collate: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
    """``collate`` that passes on the first :class:`WorkerUserError` among the items, or its own."""

    def collate_or_error(items: list[Any]) -> Any:
        for item in items:
            if isinstance(item, WorkerUserError):
                return item
        try:
            return collate(items)
        except RablipError as error:
            return WorkerUserError(error)

    return collate_or_error


def raise_if_user_error(batch: Any) -> Any:
    """The batch, or the carried user error raised again in this process."""
    if isinstance(batch, WorkerUserError):
        batch.reraise()
    return batch
