"""From untrusted input to a valid job, or an `InvalidJob` listing every problem.

Shape rules live in the models (`producers.job.models`); this module adds the rules that need the
clock and the settings (freshness, clock skew), stamps what a producer left out, and turns
pydantic's errors into `Problem` values that name the field and the rule but never the value.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, TypeAlias

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from producers.errors import InvalidJob, Problem
from producers.job import freshness, jsonvalues, rules, sensitive, yotpo
from producers.job.models import EVENT_PATHS, AttentiveJob
from producers.job.yotpo import KIND as YOTPO_KIND
from producers.job.yotpo import YotpoCustomEvent
from producers.settings import Settings

Job: TypeAlias = AttentiveJob | YotpoCustomEvent
"""Any job model: what `parse_job` returns. Each has a ``kind`` literal naming it."""
KINDS: tuple[str, ...] = (*EVENT_PATHS, YOTPO_KIND)
"""Every job kind: Attentive's (`producers.job.models.EVENT_PATHS`), then Yotpo's (`producers.job.yotpo`)."""
# Told apart by ``kind``: one model is tried per job, and a wrong kind is one problem, not six.
_ADAPTER: TypeAdapter[Job] = TypeAdapter(Annotated[Job, Field(discriminator="kind")])
_KIND_ERRORS = {"union_tag_not_found", "union_tag_invalid", "model_attributes_type"}


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def problems_of(err: ValidationError) -> list[Problem]:
    """pydantic errors as field/rule pairs, without the offending values."""
    problems = []
    errors = err.errors(include_url=False, include_input=False, include_context=False)
    failed = [tuple(e["loc"]) for e in errors]
    for e in errors:
        loc = tuple(e["loc"])
        if e["type"] == "too_short" and any(f[: len(loc)] == loc and len(f) > len(loc) for f in failed):
            continue  # an array whose members failed: the members' own problems say it
        if (e["type"] in _KIND_ERRORS and len(loc) == 0) or e["type"] == "union_tag_invalid":
            problems.append(Problem("kind", _KIND_RULE))
            continue
        if loc and isinstance(loc[0], str) and loc[0] in _TAGS:
            loc = loc[1:]
        msg = e["msg"].removeprefix("Value error, ")
        msg = _PLAIN.get(e["type"], msg)
        problems.append(Problem(_path(loc), msg))
    return problems


_PLAIN = {
    "extra_forbidden": "is not a field the destination accepts here",
    "tuple_type": "must be an array",
    "missing": "is required",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "string_type": "must be a string",
}
_TAGS = frozenset(KINDS)
_KIND_RULE = "must be one of " + ", ".join(KINDS)


def _decode(data: Any) -> Any:
    if isinstance(data, BaseModel):
        # Python mode: JSON mode would turn a NaN in an Any field into None before it is checked.
        return data.model_dump(mode="python", exclude_none=True)
    if isinstance(data, str | bytes | bytearray):
        # surrogatepass: a lone surrogate is counted here and refused, by its path, later.
        size = len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
        if size > rules.MAX_JOB_BYTES:
            raise InvalidJob([Problem("", f"job is larger than {rules.MAX_JOB_BYTES} bytes")])
        try:
            data = jsonvalues.loads(data)
        except ValueError:
            raise InvalidJob([Problem("", "not valid JSON")]) from None
    if not isinstance(data, dict):
        raise InvalidJob([Problem("", "a job must be a JSON object")])
    return data


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def parse_job(data: Any, settings: Settings, now: datetime, *, at_enqueue: bool) -> Job:
    """Validate ``data`` (dict, JSON text or model) into a job model (one of `Job`).

    At enqueue (``at_enqueue=True``) an event without ``occurredAt`` gets ``now`` and one
    without ``externalEventId`` gets a UUID, and an event already past the freshness window
    is refused. A ``yotpo_custom_event`` gets ``occurred_at`` and ``event_id`` the same way
    (`producers.job.yotpo.stamp`); it has no freshness window. At delivery nothing is stamped and
    staleness is left to the freshness check, which dead-letters as ``stale`` rather than ``invalid``.

    Raises `InvalidJob` with every problem found, and nothing else whatever ``data`` holds.
    Values JSON cannot carry (NaN, Infinity, numbers beyond ±(2^53 − 1), lone surrogates,
    non-string keys, nesting past `rules.MAX_DEPTH`) are refused first, alone, by their paths
    (see `producers.job.jsonvalues`): they are never turned into ``null``.
    """
    raw = _decode(data)
    unsafe = jsonvalues.problems(raw)
    if unsafe:
        raise InvalidJob(unsafe)
    kind = raw.get("kind")
    if at_enqueue and isinstance(kind, str) and kind in freshness.EVENT_KINDS:
        raw = dict(raw)
        if _missing(raw.get("occurredAt")):
            raw["occurredAt"] = now.isoformat()
        if kind == "custom_event" and _missing(raw.get("externalEventId")):
            raw["externalEventId"] = str(uuid.uuid4())
    elif at_enqueue and kind == yotpo.KIND:
        raw = yotpo.stamp(raw, now)
    try:
        job = _ADAPTER.validate_python(raw, context={"region": settings.attentive_default_region})
    except ValidationError as err:
        raise InvalidJob(problems_of(err)) from None
    except RecursionError:
        raise InvalidJob([Problem("", f"nested deeper than {rules.MAX_DEPTH} levels")]) from None
    problems = _time_problems(job, settings, now, at_enqueue=at_enqueue)
    if job.account is not None and job.account not in settings.accounts:
        problems.append(Problem("account", "is not an account in ATTENTIVE_ACCOUNTS"))
    if settings.attentive_sensitive_guard:
        problems += sensitive.scan_job(job, settings.attentive_sensitive_patterns)
    if problems:
        raise InvalidJob(problems)
    return job


def _time_problems(job: Job, settings: Settings, now: datetime, *, at_enqueue: bool) -> list[Problem]:
    occurred = getattr(job, "occurredAt", None)
    if occurred is None:
        return []
    if occurred > now + timedelta(seconds=settings.attentive_future_skew_s):
        return [Problem("occurredAt", f"is more than {settings.attentive_future_skew_s:g} s in the future")]
    if at_enqueue and freshness.is_stale(occurred, now, settings.freshness_s):
        return [
            Problem(
                "occurredAt",
                f"is older than the {settings.attentive_freshness_hours:g} h freshness "
                "window: Attentive would accept it and drop it",
            )
        ]
    return []


def job_json(job: Job) -> str:
    """The job as stored and replayed: compact JSON, nulls left out, ``kind`` kept."""
    out = job.model_dump_json(exclude_none=True)
    if len(out.encode()) > rules.MAX_JOB_BYTES:
        raise InvalidJob([Problem("", f"job is larger than {rules.MAX_JOB_BYTES} bytes")])
    return out
