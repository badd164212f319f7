"""Tag suggestions for prompt autocompletion: prefix and fuzzy matches over a tag vocabulary.

The vocabulary is a CSV file in the format of AUTOMATIC1111's tag-autocomplete extension, one
tag a line: `name,category,post_count,"alias1,alias2"` (the alias column may be missing or
empty; a header line starting with `name,` is skipped). Categories are Danbooru's numbers:
0 general, 1 artist, 3 copyright, 4 character, 5 meta. Without a configured file the built-in
list `data/tags.csv` is served: a few hundred common tags written for Fabula, whose counts are
rough popularity ranks, not figures from any site.

Matching ignores case and treats spaces and underscores alike. Prefix matches (of the tag or an
alias, ordered by post count) come first; fuzzy matches (rapidfuzz's weighted ratio, weighed
with the post count) fill the rest, so a typo still finds the tag.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from rapidfuzz import fuzz, process

from services.toolkit.errors import InvalidArgument

BUILTIN = Path(__file__).with_name("data") / "tags.csv"
CATEGORIES = {0: "general", 1: "artist", 3: "copyright", 4: "character", 5: "meta"}
MAX_QUERY = 200
MAX_LIMIT = 100
DEFAULT_LIMIT = 20
# Fuzzy matches below this similarity (0-100) are noise.
_FUZZY_CUTOFF = 70


class TagFileError(ValueError):
    """A vocabulary file that cannot be read (raised at start-up)."""


@dataclass(frozen=True)
class Tag:
    name: str
    category: str
    post_count: int
    aliases: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return self.name.replace("_", " ")


@dataclass(frozen=True)
class Suggestion:
    tag: Tag
    match: str  # "prefix" or "fuzzy"
    score: float
    matched_alias: str = ""


def normalise(text: str) -> str:
    return " ".join(text.replace("_", " ").lower().split())


@dataclass
class TagIndex:
    tags: list[Tag]
    # (normalised key, tag index, alias or "") sorted by key, for prefix search by bisection.
    _keys: list[tuple[str, int, str]] = field(default_factory=list, repr=False)
    _choices: list[str] = field(default_factory=list, repr=False)
    _choice_owner: list[tuple[int, str]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        for index, tag in enumerate(self.tags):
            self._keys.append((normalise(tag.name), index, ""))
            self._choices.append(normalise(tag.name))
            self._choice_owner.append((index, ""))
            for alias in tag.aliases:
                self._keys.append((normalise(alias), index, alias))
                self._choices.append(normalise(alias))
                self._choice_owner.append((index, alias))
        self._keys.sort()

    @classmethod
    def from_csv(cls, text: str, source: str = "tags") -> TagIndex:
        tags: list[Tag] = []
        for line_number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
            if not row or not row[0].strip() or (line_number == 1 and row[0].strip().lower() == "name"):
                continue
            try:
                category = CATEGORIES.get(int(row[1]), "general") if len(row) > 1 and row[1].strip() else "general"
                count = int(row[2]) if len(row) > 2 and row[2].strip() else 0
            except ValueError:
                raise TagFileError(f"{source}, line {line_number}: category and post_count must be numbers") from None
            aliases = tuple(a.strip() for a in row[3].split(",") if a.strip()) if len(row) > 3 else ()
            tags.append(Tag(row[0].strip(), category, max(0, count), aliases))
        if not tags:
            raise TagFileError(f"{source}: no tags")
        return cls(tags)

    @classmethod
    def load(cls, path: Path | None) -> TagIndex:
        source = path or BUILTIN
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as error:
            raise TagFileError(f"tag vocabulary {source}: {error}") from None
        return cls.from_csv(text, str(source))

    def suggest(self, query: str, limit: int = 0) -> list[Suggestion]:
        if len(query) > MAX_QUERY:
            raise InvalidArgument("query", query, f"must be at most {MAX_QUERY} characters")
        limit = limit or DEFAULT_LIMIT
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidArgument("limit", limit, f"must be between 1 and {MAX_LIMIT}")
        key = normalise(query)
        if not key:
            return []
        found: dict[int, Suggestion] = {}
        start = bisect.bisect_left(self._keys, (key, -1, ""))
        for stored, index, alias in self._keys[start:]:
            if not stored.startswith(key):
                break
            if index not in found or (found[index].matched_alias and not alias):
                found[index] = Suggestion(self.tags[index], "prefix", 100.0, alias)
        ranked = sorted(found.values(), key=lambda s: (-s.tag.post_count, s.tag.name))[:limit]
        if len(ranked) < limit:
            ranked += self._fuzzy(key, limit - len(ranked), exclude=set(found))
        return ranked

    def _fuzzy(self, key: str, limit: int, exclude: set[int]) -> list[Suggestion]:
        best: dict[int, Suggestion] = {}
        matches = process.extract(key, self._choices, scorer=fuzz.WRatio, score_cutoff=_FUZZY_CUTOFF,
                                  limit=max(limit * 4, 20))
        for _, score, position in matches:
            index, alias = self._choice_owner[position]
            if index in exclude:
                continue
            if index not in best or best[index].score < score:
                best[index] = Suggestion(self.tags[index], "fuzzy", float(score), alias)
        # Similarity first; among near-equal matches the more used tag.
        ranked = sorted(best.values(),
                        key=lambda s: (-(s.score + 2 * math.log10(1 + s.tag.post_count)), s.tag.name))
        return ranked[:limit]
