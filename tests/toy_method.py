"""A toy importance method, registered through the table alone (tests/flows/test_toy_method.py).

|correlation| of each feature with the target on the test split, with a bootstrap over rows: on the linear model
y = 3a - 2b + c (scales 1, 2, 0.5) it ranks b, a, c, then noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from tasks.core.options import MethodOptions
from tasks.core.result import Details, ImportanceResult
from tasks.methods.base import Context, Method, ResultSpec, Section


class Options(MethodOptions):
    toy_draws: int = Field(default=20, ge=2, description="bootstrap draws of the toy method")


@dataclass(frozen=True)
class ToyDetails(Details):
    draws: int


def compute(subject, options: Options, context: Context) -> list[ImportanceResult]:
    X, y = subject.test.X, subject.test.y
    rng = np.random.default_rng(context.seed)
    samples = np.empty((X.shape[1], options.toy_draws))
    for draw in range(options.toy_draws):
        rows = rng.integers(0, len(y), len(y))
        samples[:, draw] = [abs(np.corrcoef(X[rows, j], y[rows])[0, 1]) for j in range(X.shape[1])]
    interval = (np.percentile(samples, 2.5, axis=1), np.percentile(samples, 97.5, axis=1))
    return [ImportanceResult.from_samples("toy", "behavioural", subject.features, samples, interval=interval,
                                          sampling="bootstrap", details=ToyDetails(draws=options.toy_draws))]


def section(result: ImportanceResult) -> dict:
    top = int(result.importances_mean.argmax())
    return {"top": result.features[top], "value": float(result.importances_mean[top]), "draws": result.details.draws}


def method(*, judged: bool) -> Method:
    return Method(name="toy", title="Toy correlation", kind="behavioural", units=frozenset({"column"}),
                  results=(ResultSpec("toy", "Toy |corr| with the target", judged=judged),), options=Options,
                  compute=compute, stored=(ToyDetails,),
                  section=Section("toy.html.j2", section, folder=Path(__file__).parent / "templates"))
