"""Built-in suite importers: CrowS-Pairs CSV and StereoSet intrasentence JSON.

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
from fairaudit.inputs.suite import SentencePair, Suite
from fairaudit.names import safe_name


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _suites(prefix: str, source: str, description: str, by_type: dict[str, list[SentencePair]]) -> list[Suite]:
    return [
        Suite(
            suite=f"{prefix}_{safe_name(bias_type)}",
            axis=safe_name(bias_type),
            version=1,
            description=f"{description} Bias type '{bias_type}', imported from {source}.",
            sentence_pairs=pairs,
        )
        for bias_type, pairs in sorted(by_type.items())
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


@hookimpl
def register_importers(register):
    register(CrowsPairsImporter())
    register(StereoSetImporter())
