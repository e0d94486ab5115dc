"""Rules for the data pipeline (``workflows/data_pipeline.py``): what counts as usable input and output.

A cheap guard checks the input before anything is read, helpers check the shape of what ``process``
produced, and expressions judge the scores that ``analyze`` computes.
"""

from __future__ import annotations

from circuit_breaker import RuleResult, RuleSet, Token
from circuit_breaker.rules import all_of, numericality, presence

__all__ = ["HIGH_CONFIDENCE", "pipeline_rules"]

HIGH_CONFIDENCE = 0.8
"""At or above this confidence and quality the analysis is trusted without a person looking at it."""

pipeline_rules = RuleSet()


@pipeline_rules.rule(desc="an input file, when one is named, is a .csv file")
def csv_input(token: Token) -> RuleResult:
    """Refuse other files before reading them: a JSON file parsed as CSV gives nonsense, not an error."""
    path = token.data.get("input_file")
    if path is None:
        return RuleResult.ok()
    if not isinstance(path, str) or not path.lower().endswith(".csv"):
        return RuleResult.fail(f"input_file must name a .csv file, got {path!r}")
    return RuleResult.ok()


pipeline_rules.add(
    "has_rows",
    numericality("row_count", greater_than=0, only_integer=True),
    desc="the input has at least one data row below its header",
)
pipeline_rules.add(
    "has_columns",
    presence("columns"),
    desc="the input has a header row naming its columns",
)
pipeline_rules.add(
    "scores_in_range",
    all_of(
        numericality("quality_score", greater_than_or_equal_to=0, less_than_or_equal_to=1),
        numericality("confidence_score", greater_than_or_equal_to=0, less_than_or_equal_to=1),
    ),
    desc="quality and confidence are fractions",
)
pipeline_rules.add(
    "high_confidence",
    f"confidence_score >= {HIGH_CONFIDENCE} and quality_score >= {HIGH_CONFIDENCE}",
    desc="the analysis can be trusted without a person looking at it",
)
