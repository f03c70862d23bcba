"""The exceptions featureaudit raises on bad input.

Every message names the culprit (a file, a column, an input) and says what to do.
The command line turns any of these into one line on stderr and an exit status: 3 for
StorageError, 1 for DeliveryError (the report is written but not sent), 2 for the rest (bad input).

    FeatureAuditError
    ├── RegistryError      no such registry, model or version; unsafe names
    ├── ManifestError      manifest.json unreadable or incomplete
    ├── ModelLoadError     model file missing, corrupt, refused by Keras safe mode, or using an unregistered class
    ├── ModuleImportError  a module named by --import (the flows' ``imports``) could not be imported
    ├── DataError          a split missing columns, with bad dtypes, NaN/inf or no rows
    ├── StorageError       the output folder is not writable, or the disk is (nearly) full
    ├── ResultsError       a results.json missing, not JSON, not a featureaudit document, or of a newer schema
    ├── DeliveryError      the report could not be sent
    ├── SigningError       a signing key, certificate or password unusable; a PDF that cannot be signed or read
    ├── ApprovalError      the approval log cannot be read or appended to
    └── RegistryRunFailed  some models of a registry run failed (the flow's Failed state carries it)
"""

from __future__ import annotations

from typing import Any


class FeatureAuditError(Exception):
    """Base class: an input or environment problem the user can fix."""


class RegistryError(FeatureAuditError):
    """The registry, model or version folder is missing or unusable."""


class ManifestError(FeatureAuditError):
    """manifest.json is not valid JSON or lacks a required field."""


class ModelLoadError(FeatureAuditError):
    """The model file cannot be loaded safely, or does not match the features."""


class ModuleImportError(FeatureAuditError):
    """A module the operator named to register custom Keras objects could not be imported."""


class DataError(FeatureAuditError):
    """A data split does not match the manifest or holds values we cannot use."""


class StorageError(FeatureAuditError):
    """The output folder cannot take the report: not writable, or too little free space."""


class ResultsError(FeatureAuditError):
    """A run folder's results.json cannot be read as a featureaudit results document (:mod:`tasks.report.document`)."""


class DeliveryError(FeatureAuditError):
    """The report could not be written or delivered."""


class SigningError(FeatureAuditError):
    """A signing key, certificate or password is unusable, or a PDF cannot be signed or read as a signed report."""


class ApprovalError(FeatureAuditError):
    """The approval log cannot be read or appended to."""


class RegistryRunFailed(FeatureAuditError):
    """Some models of a registry run failed: the message names each one and why; ``outcome`` has every model's line."""

    def __init__(self, message: str, outcome: dict[str, dict[str, str | None]]):
        super().__init__(message)
        self.outcome = outcome

    def __reduce__(self):
        return type(self), (str(self), self.outcome)


def retry_unless_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry I/O hiccups, never bad input (retrying cannot fix it)."""
    return not isinstance(state.data, FeatureAuditError)
