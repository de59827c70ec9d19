"""Grafana dashboards as code: serving, model quality and pipelines, plus provisioning files.

Built with the Grafana Foundation SDK and written as provisioning JSON (Grafana itself is not part
of this project). Per-feature panels come from the feature contract, never from a hand-typed
list, and drift threshold lines from the ``drift:`` section of ``configs/monitoring.yaml``.

Every dashboard has a stable ``uid`` so re-provisioning replaces it instead of adding a copy.
Queries go through the ``datasource`` dashboard variable, which defaults to the provisioned
Prometheus data source (``datasources.yaml``).

Regenerate the committed files after changing this module, the contract or the thresholds::

    python -m monitoring.dashboards --out monitoring/grafana
"""

from __future__ import annotations

import argparse
import json
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as StatPanel
from grafana_foundation_sdk.builders.table import Panel as TablePanel
from grafana_foundation_sdk.builders.timeseries import Panel as TimeseriesPanel
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common, dashboard
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from churn_core.business import ALL as ALL_SEGMENTS
from churn_core.business import METRICS as BUSINESS_METRICS
from churn_core.contract import FeatureContract, load_contract
from churn_core.job_metrics import DURATION, LAST_SUCCESS, QUARANTINED_ROWS, ROWS
from monitoring.drift import DriftStatus, DriftThresholds, load_thresholds

JSON = dict[str, Any]

_REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONTRACT = _REPO_ROOT / "configs" / "contracts" / "saas.yaml"
DEFAULT_MONITORING_CONFIG = _REPO_ROOT / "configs" / "monitoring.yaml"
DEFAULT_OUT = Path("monitoring/grafana")
DEFAULT_PROMETHEUS_URL = "http://prometheus:9090"
# Where the Grafana container sees the dashboard JSON files (mount monitoring/grafana there).
DEFAULT_DASHBOARDS_PATH = "/var/lib/grafana/dashboards/churn"
REGENERATE_COMMAND = "python -m monitoring.dashboards --out monitoring/grafana"

DATASOURCE_UID = "churn-prometheus"
DATASOURCE_VARIABLE = "datasource"
FOLDER = "Churn"
TAGS = ["churn", "generated"]

SERVING_UID = "churn-serving"
MODEL_QUALITY_UID = "churn-model-quality"
PIPELINES_UID = "churn-pipelines"
DASHBOARD_FILES = {
    SERVING_UID: "churn-serving.json",
    MODEL_QUALITY_UID: "churn-model-quality.json",
    PIPELINES_UID: "churn-pipelines.json",
}

# The score column that ``monitoring.drift.detect_drift`` compares next to the features.
SCORE_FEATURE = "probability"
# Numeric value of ``churn_drift_status{feature}`` for each DriftStatus, in declaration order.
DRIFT_STATUS_CODES: dict[str, int] = {
    status: code for code, status in enumerate(typing.get_args(DriftStatus))
}
_STATUS_COLORS = {"ok": "green", "drift": "red", "insufficient_data": "yellow"}

RATE = "[$__rate_interval]"
# The age at which ChurnJobNotSucceeding (monitoring/prometheus/rules.yml) alarms.
JOB_STALE_AFTER_S = 2 * 86400
_GRID_WIDTH = 24


# -- building blocks ---------------------------------------------------------------------------


def _datasource() -> dashboard.DataSourceRef:
    """The data source every panel and query uses: the ``datasource`` variable."""
    return dashboard.DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VARIABLE}}}")


def _label(value: str) -> str:
    """A PromQL label value in double quotes, escaped."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _query(expr: str, legend: str = "", *, ref_id: str = "A", table: bool = False) -> Dataquery:
    """A Prometheus query; ``table`` makes it an instant query in table format."""
    query = Dataquery().expr(expr).ref_id(ref_id).datasource(_datasource())
    if legend:
        query = query.legend_format(legend)
    if table:
        query = query.instant().format(PromQueryFormat.TABLE)
    return query


def _thresholds(*steps: tuple[float | None, str]) -> ThresholdsConfig:
    """Absolute thresholds; the first step's value is None (minus infinity)."""
    return (
        ThresholdsConfig()
        .mode(dashboard.ThresholdsMode.ABSOLUTE)
        .steps([dashboard.Threshold(value=value, color=color) for value, color in steps])
    )


def _timeseries(
    title: str,
    description: str,
    queries: Sequence[Dataquery],
    *,
    unit: str = "short",
    width: int = 12,
    height: int = 8,
) -> TimeseriesPanel:
    """A time-series panel with a table legend showing mean and last values."""
    panel = (
        TimeseriesPanel()
        .title(title)
        .description(description)
        .datasource(_datasource())
        .unit(unit)
        .span(width)
        .height(height)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "lastNotNull"])
        )
    )
    for query in queries:
        panel = panel.with_target(query)
    return panel


def _with_threshold_line(panel: TimeseriesPanel, limit: float) -> TimeseriesPanel:
    """Draw ``limit`` as a dashed red line on a time-series panel."""
    return panel.thresholds(_thresholds((None, "green"), (limit, "red"))).thresholds_style(
        common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
    )


def _stat(
    title: str, description: str, query: Dataquery, *, unit: str = "short", width: int = 6
) -> StatPanel:
    """A single-value panel showing the last value of each series."""
    return (
        StatPanel()
        .title(title)
        .description(description)
        .datasource(_datasource())
        .with_target(query)
        .unit(unit)
        .span(width)
        .height(5)
        .graph_mode(common.BigValueGraphMode.AREA)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def _value_texts(texts: dict[int, tuple[str, str]]) -> list[dashboard.ValueMapping]:
    """Value mappings from a number to (display text, color)."""
    options = {
        str(value): dashboard.ValueMappingResult(text=text, color=color, index=index)
        for index, (value, (text, color)) in enumerate(texts.items())
    }
    return [dashboard.ValueMap(options=options)]


def _base(uid: str, title: str, description: str) -> Dashboard:
    """A dashboard with the shared settings: uid, tags, time range, refresh, datasource variable."""
    return (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .time("now-6h", "now")
        .refresh("1m")
        .timezone(common.TimeZoneBrowser)
        .tooltip(dashboard.DashboardCursorSync.CROSSHAIR)
        .with_variable(
            DatasourceVariable(DATASOURCE_VARIABLE).label("Data source").type("prometheus")
        )
    )


def _to_json(builder: Dashboard) -> JSON:
    """Build the dashboard, number its panels 1..n in layout order and return it as a dict."""
    built = builder.build()
    panel_id = 0
    for panel in built.panels or []:
        panel_id += 1
        panel.id_val = panel_id
        if isinstance(panel, dashboard.RowPanel):
            for nested in panel.panels:
                panel_id += 1
                nested.id_val = panel_id
    encoded: JSON = json.loads(JSONEncoder(sort_keys=True).encode(built))
    return encoded


# -- serving -----------------------------------------------------------------------------------


def _requests_panels() -> list[TimeseriesPanel]:
    """Request rate by status, p50/p99 latency by route and the 5xx share."""
    buckets = f"sum by (le, route) (rate(churn_http_request_duration_seconds_bucket{RATE}))"
    latency = [
        _query(f"histogram_quantile({q}, {buckets})", f"p{round(q * 100)} {{{{route}}}}", ref_id=r)
        for q, r in ((0.5, "A"), (0.99, "B"))
    ]
    total = f"sum(rate(churn_http_requests_total{RATE}))"
    errors = f'sum(rate(churn_http_requests_total{{status=~"5.."}}{RATE}))'
    client = f'sum(rate(churn_http_requests_total{{status=~"4.."}}{RATE}))'
    return [
        _timeseries(
            "Request rate by status",
            "HTTP requests per second by status code.",
            [_query(f"sum by (status) (rate(churn_http_requests_total{RATE}))", "{{status}}")],
            unit="reqps",
        ),
        _timeseries("Latency p50 / p99 by route", "Request latency quantiles.", latency, unit="s"),
        _with_threshold_line(
            _timeseries(
                "Error share",
                "Share of requests answered 5xx (server errors) and 4xx (client errors).",
                [
                    _query(f"{errors} / {total}", "5xx", ref_id="A"),
                    _query(f"{client} / {total}", "4xx", ref_id="B"),
                ],
                unit="percentunit",
            ),
            0.01,
        ),
    ]


def _cache_and_limits_panels() -> list[TimeseriesPanel]:
    """Cache hit ratio, rate-limited requests and auth failures."""
    lookups = f"sum(rate(churn_prediction_cache_total{RATE}))"
    hits = f'sum(rate(churn_prediction_cache_total{{result="hit"}}{RATE}))'
    return [
        _timeseries(
            "Prediction cache hit ratio",
            "Share of prediction cache lookups that were hits.",
            [_query(f"{hits} / {lookups}", "hit ratio")],
            unit="percentunit",
            width=8,
        ),
        _timeseries(
            "Rate-limited requests",
            "Requests refused by the rate limit, per second.",
            [_query(f"sum(rate(churn_rate_limited_requests_total{RATE}))", "refused")],
            unit="reqps",
            width=8,
        ),
        _timeseries(
            "Auth failures by error",
            "Refused credentials and tokens per second, by reason.",
            [_query(f"sum by (error) (rate(churn_auth_failures_total{RATE}))", "{{error}}")],
            unit="reqps",
            width=8,
        ),
    ]


def _replica_panels() -> list[StatPanel | TimeseriesPanel]:
    """Redis health, served model version and model reloads."""
    redis = _stat(
        "Redis up",
        "Replicas whose last Redis call failed show DOWN; replicas configured without Redis "
        "are left out (No data when none uses it).",
        _query("min(churn_redis_up and churn_redis_configured == 1)", "redis"),
    )
    redis = redis.mappings(_value_texts({1: ("UP", "green"), 0: ("DOWN", "red")})).thresholds(
        _thresholds((None, "red"), (1, "green"))
    )
    version = _stat(
        "Model version per replica",
        "Registry version each replica serves; differing values mean a rollout in progress.",
        _query("churn_model_version", "{{instance}}"),
    ).decimals(0)
    reloads = _timeseries(
        "Model reloads by outcome",
        "Model reload attempts by outcome.",
        [_query(f"sum by (outcome) (increase(churn_model_reloads_total{RATE}))", "{{outcome}}")],
        width=12,
        height=5,
    )
    return [redis, version, reloads]


def _score_panel() -> TimeseriesPanel:
    """Mean predicted churn probability and the share scored 0.5 or more."""
    scored = f"sum(rate(churn_prediction_probability_count{RATE}))"
    mean = f"sum(rate(churn_prediction_probability_sum{RATE})) / {scored}"
    # 0.5 is a bucket boundary (serve_apps/metrics.py PROBABILITY_BUCKETS): an exact share.
    below = f'sum(rate(churn_prediction_probability_bucket{{le="0.5"}}{RATE}))'
    return _timeseries(
        "Churn probability served",
        "Mean predicted churn probability and the share of predictions at 0.5 or more; the "
        "drift job compares the full distribution with the training scores.",
        [_query(mean, "mean", ref_id="A"), _query(f"1 - {below} / {scored}", ">= 0.5", ref_id="B")],
        unit="percentunit",
        width=8,
    )


def _traffic_panels() -> list[TimeseriesPanel]:
    """Predictions by label, the served score and online-store lookups by source."""
    return [
        _timeseries(
            "Predictions by label",
            "Predictions per second by predicted label.",
            [_query(f"sum by (label) (rate(churn_predictions_total{RATE}))", "{{label}}")],
            unit="ops",
            width=8,
        ),
        _score_panel(),
        _prediction_log_panel(),
        _timeseries(
            "Online-store lookups by source",
            "Online feature lookups per second by where the features came from.",
            [
                _query(
                    f"sum by (source) (rate(churn_online_feature_lookups_total{RATE}))",
                    "{{source}}",
                )
            ],
            unit="ops",
            width=8,
        ),
    ]


def _prediction_log_panel() -> TimeseriesPanel:
    """Prediction-log rows by outcome and the rows waiting in replicas."""
    return _timeseries(
        "Prediction log",
        "Rows per second queued, written to Delta, spooled to local disk (Delta failing) and "
        "replayed from the spool; and rows buffered in replicas. Spooled above zero for long "
        "means the lake is unreachable.",
        [
            _query(
                f"sum by (outcome) (rate(churn_prediction_log_rows_total{RATE}))",
                "{{outcome}}",
                ref_id="A",
            ),
            _query("sum(churn_prediction_log_buffered_rows)", "buffered rows", ref_id="B"),
        ],
        width=8,
    )


def serving_dashboard() -> JSON:
    """The API dashboard: traffic, latency, errors, cache, limits, auth, Redis and model."""
    builder = _base(SERVING_UID, "Churn / Serving", "The churn prediction API (Ray Serve).")
    sections: list[tuple[str, Sequence[StatPanel | TimeseriesPanel]]] = [
        ("Requests", _requests_panels()),
        ("Cache, rate limit and auth", _cache_and_limits_panels()),
        ("Replicas", _replica_panels()),
        ("Predictions", _traffic_panels()),
    ]
    for title, panels in sections:
        builder = builder.with_row(Row(title))
        for panel in panels:
            builder = builder.with_panel(panel)
    return _to_json(builder)


# -- model quality -----------------------------------------------------------------------------


def _psi_panel(feature: str, description: str, thresholds: DriftThresholds) -> TimeseriesPanel:
    """PSI of one feature over time with the alarm threshold."""
    panel = _timeseries(
        feature,
        description or f"Population stability index of {feature}.",
        [_query(f"churn_drift_psi{{feature={_label(feature)}}}", "PSI")],
        width=6,
        height=6,
    )
    return _with_threshold_line(panel, thresholds.psi)


def _drift_table() -> TablePanel:
    """One row per feature: drift status, PSI and Jensen-Shannon distance."""
    mapping = {
        code: (status, _STATUS_COLORS.get(status, "blue"))
        for status, code in DRIFT_STATUS_CODES.items()
    }
    queries = [
        _query("churn_drift_status", ref_id="A", table=True),
        _query("churn_drift_psi", ref_id="B", table=True),
        _query("churn_drift_js_distance", ref_id="C", table=True),
    ]
    organize = {
        "excludeByName": {"Time": True, "__name__": True, "instance": True, "job": True},
        "renameByName": {"Value #A": "status", "Value #B": "PSI", "Value #C": "JS distance"},
        "indexByName": {"feature": 0, "Value #A": 1, "Value #B": 2, "Value #C": 3},
    }
    table = (
        TablePanel()
        .title("Drift status")
        .description("Latest drift verdict and statistics of every feature and the score.")
        .datasource(_datasource())
        .span(_GRID_WIDTH)
        .height(10)
        .with_transformation(dashboard.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(dashboard.DataTransformerConfig(id_val="organize", options=organize))
        .override_by_name(
            "status",
            [
                dashboard.DynamicConfigValue(id_val="mappings", value=_value_texts(mapping)),
                dashboard.DynamicConfigValue(
                    id_val="custom.cellOptions", value={"type": "color-background"}
                ),
            ],
        )
    )
    for query in queries:
        table = table.with_target(query)
    return table


def _accuracy_panels(thresholds: DriftThresholds) -> list[StatPanel | TimeseriesPanel]:
    """ROC-AUC by model version, features in drift and score drift."""
    score = _label(SCORE_FEATURE)
    drift_code = DRIFT_STATUS_CODES["drift"]
    return [
        _timeseries(
            "ROC-AUC by model version",
            "ROC-AUC on labelled predictions, per model version.",
            [_query("churn_model_roc_auc", "v{{model_version}}")],
            unit="none",
            width=12,
        ),
        _stat(
            "Features in drift",
            "Number of features (and the score) whose drift status is drift.",
            _query(f"count(churn_drift_status == {drift_code}) or vector(0)", "drifted"),
            width=4,
        ).thresholds(_thresholds((None, "green"), (1, "red"))),
        _with_threshold_line(
            _timeseries(
                f"Score drift ({SCORE_FEATURE})",
                "PSI and Jensen-Shannon distance of the predicted churn probability.",
                [
                    _query(f"churn_drift_psi{{feature={score}}}", "PSI", ref_id="A"),
                    _query(f"churn_drift_js_distance{{feature={score}}}", "JS", ref_id="B"),
                ],
                width=8,
            ),
            thresholds.psi,
        ),
    ]


def _business(field: str, segment: str = "") -> str:
    name = BUSINESS_METRICS[field][0]
    return (
        f"{name}{{segment={_label(segment)}}}"
        if segment
        else f'{name}{{segment!="{ALL_SEGMENTS}"}}'
    )


def _business_panels() -> list[StatPanel | TablePanel]:
    """The latest batch scoring's churn rate, revenue at risk and campaign, overall and by segment."""
    stats = [
        _stat(
            "Predicted churn rate",
            "Mean predicted probability of churn over every customer of the latest scored snapshot.",
            _query(_business("predicted_churn_rate", ALL_SEGMENTS), "churn rate"),
            unit="percentunit",
        ),
        _stat(
            "Revenue at risk (monthly)",
            "Sum over customers of monthly revenue x probability of churn.",
            _query(_business("revenue_at_risk", ALL_SEGMENTS), "revenue at risk"),
        ),
        _stat(
            "Retention campaign size",
            "Customers at or above the model's threshold: whom a retention campaign would contact.",
            _query(_business("campaign_size", ALL_SEGMENTS), "customers"),
        ),
        _stat(
            "Campaign revenue at risk",
            "Revenue at risk of the customers the campaign targets.",
            _query(_business("campaign_revenue_at_risk", ALL_SEGMENTS), "revenue at risk"),
        ),
    ]
    fields = ["customers", "predicted_churn_rate", "revenue_at_risk", "campaign_size"]
    refs = "ABCD"
    organize = {
        "excludeByName": {"Time": True, "__name__": True, "instance": True, "job": True},
        "renameByName": {
            f"Value #{ref}": field.replace("_", " ")
            for ref, field in zip(refs, fields, strict=True)
        },
        "indexByName": {"segment": 0} | {f"Value #{r}": i + 1 for i, r in enumerate(refs)},
    }
    table = (
        TablePanel()
        .title("Business metrics by segment")
        .description("The latest scored snapshot per segment of the contract's business section.")
        .datasource(_datasource())
        .span(_GRID_WIDTH)
        .height(10)
        .with_transformation(dashboard.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(dashboard.DataTransformerConfig(id_val="organize", options=organize))
    )
    for ref, field in zip(refs, fields, strict=True):
        table = table.with_target(_query(_business(field), ref_id=ref, table=True))
    return [*stats, table]


def model_quality_dashboard(
    contract: FeatureContract, thresholds: DriftThresholds | None = None
) -> JSON:
    """Accuracy and drift (ROC-AUC, drift table, score drift), the business metrics of the latest
    batch scoring, and one PSI panel per feature."""
    limits = thresholds or DriftThresholds()
    builder = _base(
        MODEL_QUALITY_UID,
        "Churn / Model quality",
        f"Accuracy and drift of the {contract.name} churn model against its training data.",
    ).with_row(Row("Accuracy and drift"))
    for panel in _accuracy_panels(limits):
        builder = builder.with_panel(panel)
    builder = builder.with_panel(_drift_table()).with_row(Row("Business (latest batch scoring)"))
    for business_panel in _business_panels():
        builder = builder.with_panel(business_panel)
    builder = builder.with_row(Row("PSI by feature"))
    for feature in contract.features:
        builder = builder.with_panel(_psi_panel(feature.name, feature.description, limits))
    return _to_json(builder)


# -- pipelines ---------------------------------------------------------------------------------


def _per_run(panel: TimeseriesPanel) -> TimeseriesPanel:
    """Draw a per-run value as steps: it holds from one run until the next replaces it."""
    return panel.line_interpolation(common.LineInterpolation.STEP_AFTER)


def _source_panels(source: str) -> list[TimeseriesPanel]:
    """Rows by job and stage, and quarantined rows by reason, of one contract source."""
    selector = f"{{source={_label(source)}}}"
    return [
        _per_run(
            _timeseries(
                f"{source}: rows by job and stage",
                f"Rows of source {source} each job's latest run handled, per stage.",
                [_query(f"max by (job, stage) ({ROWS}{selector})", "{{job}} / {{stage}}")],
                height=6,
            )
        ),
        _per_run(
            _timeseries(
                f"{source}: quarantined by reason",
                f"Rows of source {source} the latest validation run set aside, by reason.",
                [_query(f"max by (reason) ({QUARANTINED_ROWS}{selector})", "{{reason}}")],
                height=6,
            )
        ),
    ]


def _overview_panels() -> list[StatPanel | TimeseriesPanel]:
    """Time since each job's last success, its rows, quarantined rows and durations.

    Job metrics hold the latest run's values (churn_core/job_metrics.py), so they are shown
    as they are, never through rate() or increase(); ``max`` rather than ``sum`` keeps one
    value should a job's file and its push both be scraped.
    """
    rows = f"max by (job, stage, source) ({ROWS})"
    quarantined = f"max by (source, reason) ({QUARANTINED_ROWS})"
    since = _stat(
        "Time since last success",
        "Age of each job's last successful run; red past the ChurnJobNotSucceeding threshold.",
        _query(f"time() - max by (job) ({LAST_SUCCESS})", "{{job}}"),
        unit="s",
        width=_GRID_WIDTH,
    ).thresholds(_thresholds((None, "green"), (JOB_STALE_AFTER_S, "red")))
    return [
        since,
        _per_run(
            _timeseries(
                "Rows by job, stage and source",
                "Rows each pipeline job's latest run handled, per stage and source.",
                [_query(rows, "{{job}} / {{stage}} / {{source}}")],
            )
        ),
        _per_run(
            _timeseries(
                "Quarantined rows by reason",
                "Rows the latest validation run set aside in quarantine, by source and reason.",
                [_query(quarantined, "{{source}} / {{reason}}")],
            )
        ),
        _per_run(
            _timeseries(
                "Job durations",
                "Duration of the latest successful run of each pipeline job.",
                [_query(f"max by (job) ({DURATION})", "{{job}}")],
                unit="s",
                width=_GRID_WIDTH,
            )
        ),
    ]


def pipelines_dashboard(contract: FeatureContract) -> JSON:
    """Pipeline jobs: rows, quarantine and durations overall, then per contract source."""
    builder = _base(
        PIPELINES_UID,
        "Churn / Pipelines",
        f"Batch and streaming jobs that build the {contract.name} feature tables.",
    ).with_row(Row("Overview"))
    for panel in _overview_panels():
        builder = builder.with_panel(panel)
    for source in contract.sources:
        builder = builder.with_row(Row(f"Source: {source}"))
        for panel in _source_panels(source):
            builder = builder.with_panel(panel)
    return _to_json(builder)


# -- provisioning ------------------------------------------------------------------------------


def dashboards(contract: FeatureContract, thresholds: DriftThresholds | None = None) -> list[JSON]:
    """All three dashboards, in file order."""
    return [
        serving_dashboard(),
        model_quality_dashboard(contract, thresholds),
        pipelines_dashboard(contract),
    ]


def dashboard_provider(dashboards_path: str = DEFAULT_DASHBOARDS_PATH) -> JSON:
    """Grafana's dashboard provisioning: a file provider reading ``dashboards_path``."""
    provider = {
        "name": "churn",
        "orgId": 1,
        "folder": FOLDER,
        "type": "file",
        "disableDeletion": False,
        "allowUiUpdates": False,
        "updateIntervalSeconds": 30,
        "options": {"path": dashboards_path, "foldersFromFilesStructure": False},
    }
    return {"apiVersion": 1, "providers": [provider]}


def datasource_provisioning(prometheus_url: str = DEFAULT_PROMETHEUS_URL) -> JSON:
    """Grafana's data source provisioning: the Prometheus the dashboards query by default."""
    source = {
        "name": "Prometheus",
        "uid": DATASOURCE_UID,
        "type": "prometheus",
        "access": "proxy",
        "url": prometheus_url,
        "isDefault": True,
        "editable": False,
        "jsonData": {"httpMethod": "POST", "timeInterval": "15s"},
    }
    return {"apiVersion": 1, "datasources": [source]}


def _dump_json(data: JSON) -> str:
    """Stable JSON text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _dump_yaml(data: JSON) -> str:
    """Stable YAML text with a header naming the generator."""
    header = f"# Generated by monitoring/dashboards.py; regenerate: {REGENERATE_COMMAND}\n"
    return header + yaml.safe_dump(data, sort_keys=False)


def render_files(
    contract: FeatureContract,
    *,
    thresholds: DriftThresholds | None = None,
    prometheus_url: str = DEFAULT_PROMETHEUS_URL,
    dashboards_path: str = DEFAULT_DASHBOARDS_PATH,
) -> dict[str, str]:
    """File name -> text of every file ``write_dashboards`` writes."""
    files = {
        DASHBOARD_FILES[board["uid"]]: _dump_json(board)
        for board in dashboards(contract, thresholds)
    }
    files["dashboards.yaml"] = _dump_yaml(dashboard_provider(dashboards_path))
    files["datasources.yaml"] = _dump_yaml(datasource_provisioning(prometheus_url))
    return files


def write_dashboards(
    contract: FeatureContract,
    out_dir: Path,
    *,
    thresholds: DriftThresholds | None = None,
    prometheus_url: str = DEFAULT_PROMETHEUS_URL,
    dashboards_path: str = DEFAULT_DASHBOARDS_PATH,
) -> list[Path]:
    """Write the three dashboards and both provisioning files to ``out_dir``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = render_files(
        contract,
        thresholds=thresholds,
        prometheus_url=prometheus_url,
        dashboards_path=dashboards_path,
    )
    written = []
    for name, text in files.items():
        path = out_dir / name
        path.write_text(text)
        written.append(path)
    return written


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options of ``python -m monitoring.dashboards``."""
    parser = argparse.ArgumentParser(description="Write the Grafana dashboards and provisioning.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--contract", type=Path, default=DEFAULT_CONTRACT)
    parser.add_argument("--monitoring-config", type=Path, default=DEFAULT_MONITORING_CONFIG)
    parser.add_argument("--prometheus-url", default=DEFAULT_PROMETHEUS_URL)
    parser.add_argument("--dashboards-path", default=DEFAULT_DASHBOARDS_PATH)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Generate the dashboards from the contract and thresholds and print the written paths."""
    args = _parse_args(argv)
    paths = write_dashboards(
        load_contract(args.contract),
        args.out,
        thresholds=load_thresholds(args.monitoring_config),
        prometheus_url=args.prometheus_url,
        dashboards_path=args.dashboards_path,
    )
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
