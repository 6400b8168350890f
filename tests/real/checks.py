"""Verdicts of the real lane: what the channel shows, compared with what the server really sent.

Shared by ``tests/real`` (which asserts them) and ``bench/real_model.py`` (which counts them).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from tests.real.lane import (
    BlogRun,
    StatusPoint,
    front_matter,
    marked_incomplete,
    shown_text,
    squeeze,
    status_points,
    words,
)
from tests.real.proxy import Completion, RecordingProxy

DONE = re.compile(r"^✅.*?\bDone \((\d+) words\)", re.DOTALL)


def completions_for(proxy: RecordingProxy, question: str) -> list[Completion]:
    """The streamed completion requests that asked ``question`` (as the last user turn), in order."""
    return [c for c in proxy.completions if c.stream and question.strip() in c.last_user_message]


@dataclass
class ReplyVerdict:
    """One chat answer against the completion that produced it."""

    question: str
    record: Completion | None
    parts: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)

    @property
    def cut_silently(self) -> bool:
        """The stream did not finish (broken, or cut at the token limit) but the answer looks complete."""
        return self.record is not None and self.record.outcome != "stop" and not marked_incomplete(self.parts)


def judge_reply(proxy: RecordingProxy, question: str, parts: list[dict[str, Any]]) -> ReplyVerdict:
    """Whether an answer tells the truth about the stream behind it.

    - A reply whose stream finished (``finish_reason: stop``) shows the model's text and no ⚠️ line.
    - A reply whose stream was cut at the token limit or broke (no finish reason, ``[DONE]`` without one,
      a dropped connection, an error) ends with a ⚠️ line: it is never shown as complete.
    """
    records = completions_for(proxy, question)
    record = records[-1] if records else None
    verdict = ReplyVerdict(question, record, parts)
    shown = shown_text(parts)
    if not parts:
        verdict.problems.append("no answer in the channel")
        return verdict
    if record is None:
        if not marked_incomplete(parts):
            verdict.problems.append(f"an answer without a model request is not marked: {shown[:200]!r}")
        return verdict
    if record.outcome == "stop":
        if marked_incomplete(parts):
            verdict.problems.append(f"a finished stream is shown with a ⚠️ note: {shown[-300:]!r}")
        if squeeze(record.text) and squeeze(record.text) != squeeze(shown):
            verdict.problems.append(
                f"the answer is not the model's text:\n shown: {shown[:300]!r}\n model: {record.text[:300]!r}"
            )
    elif not marked_incomplete(parts):
        verdict.problems.append(
            f"the stream ended {describe(record)} but the answer is shown as complete: {shown[-300:]!r}"
        )
    elif record.text and squeeze(record.text) not in squeeze(shown):
        verdict.problems.append(
            f"the text before the note is not what the model sent:\n shown: {shown[:300]!r}\n"
            f" model: {record.text[:300]!r}"
        )
    return verdict


def describe(record: Completion) -> str:
    if record.status != 200:
        return f"with HTTP {record.status} ({(record.error or '')[:120]})"
    if record.finish_reason:
        return f"with finish_reason {record.finish_reason!r}"
    if record.client_disconnected:
        return "with the bot hanging up"
    if record.done:
        return "with [DONE] and no finish reason (interrupted)"
    return "without a finish reason or [DONE] (connection dropped)"


def probes_during_streams(proxy: RecordingProxy) -> list[str]:
    """Requests the bot sent to the server while one of its completions was streaming (each of which
    makes llama-cpp-python end that stream)."""
    found = []
    for record in proxy.completions:
        end = record.ended_at or float("inf")
        for seen in proxy.busy_between(record.sent_at, end):
            found.append(f"{seen.method} {seen.path} {seen.at - record.sent_at:.2f}s into a completion")
        for other in proxy.completions:
            if other is not record and record.sent_at < other.sent_at < end:
                found.append(f"another completion {other.sent_at - record.sent_at:.2f}s into a completion")
    return found


@dataclass
class ArticleVerdict:
    """One /blog job: its status message, its article, and the completions that wrote it."""

    records: list[Completion]
    final_status: str
    article: str | None
    problems: list[str] = field(default_factory=list)
    halfway: dict[str, Any] = field(default_factory=dict)

    @property
    def shown_done(self) -> bool:
        return DONE.search(self.final_status) is not None

    def report(self) -> str:
        """What happened, for a failure message."""
        lines = [f"status: {self.final_status!r}"]
        lines += [
            f"completion {i}: {describe(r)}, {len(r.deltas)} tokens" for i, r in enumerate(self.records)
        ]
        lines.append(f"halfway: {self.halfway}")
        return "\n".join(lines)

    @property
    def posted_incomplete(self) -> bool:
        """Shown Done although its last generation did not finish, or far below its target."""
        return any(p.startswith("incomplete:") for p in self.problems)


def judge_article(run: BlogRun, *, progress_interval: float) -> ArticleVerdict:
    """Whether a blog job tells the truth: Done only when whole, a publishable file, a true progress line."""
    final_status = run.status["content"]
    verdict = ArticleVerdict(run.records, final_status, run.article)
    if not run.records:
        verdict.problems.append("no completion request reached the server")
        return verdict
    last = run.records[-1]
    done = DONE.search(final_status)
    if done is not None:
        if last.outcome != "stop":
            verdict.problems.append(
                f"incomplete: shown Done but its last generation ended {describe(last)}: {final_status!r}"
            )
        if int(done.group(1)) < run.target_length * 0.5:
            verdict.problems.append(
                f"incomplete: shown Done with {done.group(1)} words for a {run.target_length}-word target"
            )
    if run.article is None:
        verdict.problems.append("no article was posted")
    else:
        _check_front_matter(verdict, run.article, done)
    _check_halfway(verdict, status_points(run.status), progress_interval)
    return verdict


def _check_front_matter(verdict: ArticleVerdict, article: str, done: re.Match[str] | None) -> None:
    try:
        raw, body = front_matter(article)
        meta = yaml.safe_load(raw)
    except (AssertionError, yaml.YAMLError) as exc:
        verdict.problems.append(f"front matter does not parse: {exc}")
        return
    if not isinstance(meta, dict):
        verdict.problems.append(f"front matter is not a mapping: {meta!r}")
        return
    missing = [key for key in ("title", "slug", "date", "tags") if key not in meta]
    if missing:
        verdict.problems.append(f"front matter lacks {missing}: {sorted(meta)}")
        return
    if not isinstance(meta["title"], str) or not meta["title"].strip():
        verdict.problems.append(f"empty title: {meta['title']!r}")
    if not isinstance(meta["slug"], str) or not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", meta["slug"]):
        verdict.problems.append(f"slug is not a slug: {meta['slug']!r}")
    if not isinstance(meta["tags"], list):
        verdict.problems.append(f"tags is not a list: {meta['tags']!r}")
    if not isinstance(meta["date"], datetime.date):
        try:
            datetime.date.fromisoformat(str(meta["date"])[:10])
        except ValueError:
            verdict.problems.append(f"date is not a date: {meta['date']!r}")
    if len(re.findall(r"^# ", body, re.MULTILINE)) > 1:
        verdict.problems.append("the body has more than one H1")
    if done is not None:
        counted = words(body)
        if abs(int(done.group(1)) - counted) > 0.25 * max(counted, 1):
            verdict.problems.append(f"Done says {done.group(1)} words, the posted body has {counted}")


def _check_halfway(verdict: ArticleVerdict, points: list[StatusPoint], progress_interval: float) -> None:
    """At the halfway point of the job's generation (by the proxy's clock), the status message's word
    count and time left are within 25 % of the truth.

    The status shown at a moment was computed a little earlier (at most one progress interval plus
    rendering), so the truth is taken over that window; the time left is shown in whole seconds, so one
    second of rounding is allowed on top.
    """
    started = verdict.records[0].sent_at
    ended = max(r.ended_at or r.sent_at for r in verdict.records)
    middle = started + (ended - started) / 2
    shown = [p for p in points if p.words is not None and p.at <= middle]
    if not shown:
        verdict.problems.append(f"progress: no (W / T words) status was shown in the first half ({points!r})")
        return
    point = shown[-1]
    lag = progress_interval + 0.5
    true_late = words("".join(r.text_until(point.at) for r in verdict.records))
    true_early = words("".join(r.text_until(point.at - lag) for r in verdict.records))
    remaining = ended - point.at
    verdict.halfway = {
        "generation_seconds": ended - started,
        "shown_at_seconds": point.at - started,
        "shown_words": point.words,
        "true_words": [true_early, true_late],
        "shown_seconds_left": point.seconds_left,
        "true_seconds_left": [remaining, remaining + lag],
        "status": point.content,
    }
    assert point.words is not None
    if not (0.75 * true_early <= point.words <= 1.25 * true_late + 1):
        verdict.problems.append(
            f"progress: {point.words} words shown at the halfway point, {true_early}–{true_late} written"
        )
    if point.seconds_left is None:
        verdict.problems.append(f"progress: no time-left estimate at the halfway point: {point.content!r}")
    elif not (0.75 * remaining - 1 <= point.seconds_left <= 1.25 * (remaining + lag) + 1):
        verdict.problems.append(
            f"progress: 'about {point.seconds_left:.0f}s left' at the halfway point; {remaining:.1f}s "
            "remained"
        )
