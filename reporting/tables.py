"""Number formats and Markdown tables shared by the report's sections."""
import statistics

PM = "±"
DASH = "–"  # a value a run does not have


def mean_std(values):
    """(mean, sample standard deviation); the deviation is None for fewer than two values."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def pct(value):
    """A fraction in %, two decimals; a dash for a missing value (None)."""
    return DASH if value is None else f"{100 * value:.2f}"


def signed_pct(value):
    return f"{100 * value:+.2f}"


def pct_spread(values, signed=False):
    """'mean ± std' in %, or the single value when there is one."""
    mean, std = mean_std(values)
    shown = signed_pct(mean) if signed else pct(mean)
    return shown if std is None else f"{shown} {PM} {100 * std:.2f}"


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
