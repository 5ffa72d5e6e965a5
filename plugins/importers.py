"""Built-in suite importers: CrowS-Pairs CSV, StereoSet intrasentence JSON and BBQ JSONL.

Each turns a public data set file into one suite per bias type, keeping every row's id and
label; rows that cannot be used are reported with their row number and reason, never
dropped silently.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from fairaudit.errors import SuiteError
from fairaudit.hookspecs import hookimpl
from fairaudit.inputs.importing import ImportResult, SkippedRow
from fairaudit.inputs.suite import Question, SentencePair, Suite
from fairaudit.names import safe_name


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _suites(prefix: str, source: str, description: str, by_type: dict[str, list], field: str = "sentence_pairs"):
    return [
        Suite.model_validate(
            {
                "suite": f"{prefix}_{safe_name(bias_type)}",
                "axis": safe_name(bias_type),
                "version": 1,
                "description": f"{description} Bias type '{bias_type}', imported from {source}.",
                field: items,
            }
        )
        for bias_type, items in sorted(by_type.items())
    ]


class CrowsPairsImporter:
    name = "crows-pairs"
    description = "CrowS-Pairs crows_pairs_anonymized.csv: sent_more / sent_less pairs, one suite per bias_type"
    Params = NoParams
    REQUIRED = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")

    def import_file(self, path: Path, params: NoParams) -> ImportResult:
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                missing = [column for column in self.REQUIRED if column not in (reader.fieldnames or [])]
                if missing:
                    raise SuiteError(
                        f"CrowS-Pairs file {path}: missing column(s) {missing}; expected the columns of "
                        f"crows_pairs_anonymized.csv ({', '.join(self.REQUIRED)})."
                    )
                rows = list(reader)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise SuiteError(f"CrowS-Pairs file {path}: cannot be read as UTF-8 CSV ({exc}).") from None
        by_type: dict[str, list[SentencePair]] = {}
        skipped: list[SkippedRow] = []
        seen: set[str] = set()
        for number, row in enumerate(rows, start=2):  # row 1 is the header
            row_id = (row.get("") or row.get("id") or str(number - 2)).strip()
            problem = None
            if any(not (row.get(column) or "").strip() for column in self.REQUIRED):
                problem = "a required field is empty"
            elif row["stereo_antistereo"].strip() not in ("stereo", "antistereo"):
                problem = f"stereo_antistereo is {row['stereo_antistereo']!r}, not 'stereo' or 'antistereo'"
            elif f"crows-{row_id}" in seen:
                problem = f"duplicate id {row_id}"
            if problem is None:
                try:
                    pair = SentencePair(
                        id=f"crows-{row_id}",
                        more=row["sent_more"],
                        less=row["sent_less"],
                        label=row["stereo_antistereo"].strip(),
                    )
                except ValidationError as exc:
                    problem = exc.errors()[0]["msg"].removeprefix("Value error, ")
            if problem is not None:
                skipped.append(SkippedRow(number, row_id, problem))
                continue
            seen.add(pair.id)
            by_type.setdefault(row["bias_type"].strip(), []).append(pair)
        return ImportResult(
            _suites(
                "crows_pairs", path.name, "CrowS-Pairs (Nangia et al., 2020; CC BY-SA 4.0) sentence pairs.", by_type
            ),
            skipped,
            len(rows),
        )


class StereoSetImporter:
    name = "stereoset"
    description = "StereoSet intrasentence JSON (dev.json schema): stereotype / anti-stereotype / unrelated, one suite per bias_type"
    Params = NoParams

    def import_file(self, path: Path, params: NoParams) -> ImportResult:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            items = data["data"]["intrasentence"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SuiteError(f"StereoSet file {path}: not readable JSON ({exc}).") from None
        except (KeyError, TypeError):
            raise SuiteError(
                f"StereoSet file {path}: expected {{'data': {{'intrasentence': [...]}}}} as in StereoSet's dev.json."
            ) from None
        if not isinstance(items, list):
            raise SuiteError(f"StereoSet file {path}: data.intrasentence is not a list.")
        by_type: dict[str, list[SentencePair]] = {}
        skipped: list[SkippedRow] = []
        for number, item in enumerate(items, start=1):
            item_id = str(item.get("id", number)) if isinstance(item, dict) else str(number)
            try:
                sentences = {s["gold_label"]: s["sentence"] for s in item["sentences"]}
                pair = SentencePair(
                    id=f"stereoset-{item_id}",
                    more=sentences["stereotype"],
                    less=sentences["anti-stereotype"],
                    unrelated=sentences["unrelated"],
                    label="stereo",
                    group_more=str(item.get("target", "")),
                    group_less=str(item.get("target", "")),
                )
                bias_type = str(item["bias_type"]).strip()
                if not bias_type:
                    raise KeyError("bias_type")
            except (KeyError, TypeError) as exc:
                skipped.append(SkippedRow(number, item_id, f"missing or malformed field {exc}"))
                continue
            except ValidationError as exc:
                skipped.append(SkippedRow(number, item_id, exc.errors()[0]["msg"].removeprefix("Value error, ")))
                continue
            by_type.setdefault(bias_type, []).append(pair)
        return ImportResult(
            _suites("stereoset", Path(path).name, "StereoSet (Nadeem et al., 2021) intrasentence items.", by_type),
            skipped,
            len(items),
        )


class BbqImporter:
    name = "bbq"
    description = (
        "BBQ data/*.jsonl (Parrish et al., 2022): questions about two people with an unknown answer, "
        "ambiguous and disambiguated contexts, one suite per category"
    )
    Params = NoParams

    def import_file(self, path: Path, params: NoParams) -> ImportResult:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SuiteError(f"BBQ file {path}: cannot be read as UTF-8 text ({exc}).") from None
        by_category: dict[str, list[Question]] = {}
        skipped: list[SkippedRow] = []
        seen: set[tuple[str, str]] = set()
        rows = 0
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            rows += 1
            row_id = str(number)
            try:
                doc = json.loads(line)
                row_id = str(doc.get("example_id", number))
                category = str(doc["category"]).strip().lower()
                if not category:
                    raise KeyError("category")
                question = bbq_question(doc)
            except json.JSONDecodeError as exc:
                skipped.append(SkippedRow(number, row_id, f"not a JSON object ({exc.msg})"))
                continue
            except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
                skipped.append(SkippedRow(number, row_id, _problem(exc)))
                continue
            if (category, question.id) in seen:
                skipped.append(SkippedRow(number, row_id, f"duplicate example_id {row_id} in category {category}"))
                continue
            seen.add((category, question.id))
            by_category.setdefault(category, []).append(question)
        return ImportResult(
            _suites(
                "bbq", Path(path).name, "BBQ (Parrish et al., 2022; CC BY 4.0) questions.", by_category, "questions"
            ),
            skipped,
            rows,
        )


def _problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return exc.errors()[0]["msg"].removeprefix("Value error, ")
    if isinstance(exc, KeyError):
        return f"missing field {exc}"
    return f"malformed row ({exc})"


def bbq_question(doc: dict) -> Question:
    """One BBQ row as a `Question`. The biased answers are found as lm-evaluation-harness's
    `bbq` task finds them (`process_docs`), so that the bias scores equal its metric: for a
    negative question, the answers whose group (from `answer_info`) is one of the
    `stereotyped_groups`; for a non-negative one, the other person's answer."""
    answers = [str(doc[f"ans{i}"]) for i in range(3)]
    info = doc["answer_info"]
    stereotyped = {str(group).lower() for group in doc["additional_metadata"]["stereotyped_groups"]}
    groups: list[list[str]] = []
    group = ""
    for index in range(3):
        entry = info[f"ans{index}"]
        if any(entry):
            group = "_".join(entry)
        elif "Latina" in answers[index]:  # rows with no answer_info (lm-eval's fix, e.g. Race_x_gender 4320)
            group = "Latino"
        groups.append(_answer_groups(group))
    unknown = [index for index, names in enumerate(groups) if names[-1] == "unknown"]
    if len(unknown) != 1:
        raise ValueError(f"answer_info marks {len(unknown)} answers as 'unknown', not one")
    polarity = {"neg": "negative", "nonneg": "nonnegative"}[doc["question_polarity"]]
    if polarity == "negative":
        biased = [i for i, names in enumerate(groups) if not set(names).isdisjoint(stereotyped)]
    else:
        biased = [i for i, names in enumerate(groups) if names[-1] != "unknown" and set(names).isdisjoint(stereotyped)]
    return Question(
        id=f"bbq-{doc['example_id']}",
        context=str(doc["context"]),
        question=str(doc["question"]),
        answers=answers,
        label=int(doc["label"]),
        unknown=unknown[0],
        biased=biased,
        condition={"ambig": "ambiguous", "disambig": "disambiguated"}[doc["context_condition"]],
        polarity=polarity,
    )


def _answer_groups(group: str) -> list[str]:
    """The group names of one BBQ answer, lower-cased (lm-eval's `_process_groups_in_answers`:
    intersectional labels such as "F-Black" or "lowSES-African" split into their parts)."""
    for old, new in (("M-", "M_"), ("F-", "F_"), ("lowSES-", "lowSES_"), ("highSES-", "highSES_")):
        group = group.replace(old, new)
    for old, new in (
        ("lowSES", "low SES"),
        ("highSES", "high SES"),
        ("nonObese", "non Obese"),
        ("nonDisabled", "non Disabled"),
        ("nonTrans", "non Trans"),
    ):
        group = group.replace(old, new)
    if "woman" in group:  # "woman", "girl", "man", "boy" are labelled by the stereotyped groups F and M
        group = group.replace("woman", "F_woman")
    elif "man" in group:
        group = group.replace("man", "M_man")
    group = group.replace("girl", "F_girl").replace("boy", "M_boy")
    return group.lower().split("_")


@hookimpl
def register_importers(register):
    register(CrowsPairsImporter())
    register(StereoSetImporter())
    register(BbqImporter())
