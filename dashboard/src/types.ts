// Shapes of the API's answers (serve_apps/schemas.py); dates arrive as ISO strings.

export interface Reason {
  feature: string;
  contribution: number;
}

export interface ScoredCustomer {
  customer_id: string;
  probability: number;
  churn: boolean;
  threshold: number | null;
  reasons: Reason[];
  snapshot_date: string;
  model_version: number;
  scored_at: string | null;
}

export interface ScoresPage {
  snapshot_date: string | null;
  model_version: number | null;
  scored_at: string | null;
  threshold: number | null;
  customers: number;
  at_risk: number;
  matching: number;
  offset: number;
  limit: number;
  sort: string;
  order: string;
  items: ScoredCustomer[];
  features: string[];
}

export interface ScoreHistoryPoint {
  snapshot_date: string;
  model_version: number;
  probability: number;
  churn: boolean;
  scored_at: string | null;
}

export interface CustomerDetail {
  customer_id: string;
  score: ScoredCustomer;
  history: ScoreHistoryPoint[];
  features: Record<string, number | boolean | string | null>;
  contributions: Reason[];
  base_value: number | null;
  explained_by: number | null;
  explained_probability: number | null;
}

export interface VersionSummary {
  version: number;
  created_at: string;
  aliases: string[];
  metrics: Record<string, number>;
  threshold: number | null;
  registered_by: string | null;
  has_report: boolean;
  lineage: Record<string, unknown>;
}

export interface AliasMove {
  alias: string;
  action: string;
  from_version: number | null;
  to_version: number;
  at: string;
  actor: string;
  reason: string;
  forced: boolean;
}

export interface ModelCatalog {
  model_name: string;
  serving_alias: string;
  serving_version: number;
  aliases: Record<string, number>;
  versions: VersionSummary[];
  alias_history: AliasMove[];
}

export interface CurvePoints {
  x: number[];
  y: number[];
}

export interface CalibrationBin {
  n: number;
  score_min: number;
  score_max: number;
  mean_score: number;
  observed_rate: number;
}

export interface LiftBin {
  decile: number;
  n: number;
  positives: number;
  score_min: number;
  rate: number;
  lift: number | null;
  cumulative_capture: number | null;
  cumulative_lift: number | null;
}

export interface ThresholdSummary {
  threshold: number;
  tp: number;
  fp: number;
  tn: number;
  fn: number;
  precision: number | null;
  recall: number | null;
  f1: number | null;
}

export interface ModelReport {
  model_version: number;
  n: number;
  positives: number;
  base_rate: number;
  metrics: Record<string, number>;
  roc: CurvePoints | null;
  pr: CurvePoints | null;
  calibration: CalibrationBin[];
  lift: LiftBin[];
  at_threshold: ThresholdSummary | null;
  segments: Record<string, Record<string, number | null>>;
  importance: Record<string, Record<string, number>>;
  notes: string[];
}

export interface DriftPoint {
  run_id: string;
  run_at: string;
  model_version: number;
  n_reference: number;
  n_current: number;
  psi: number | null;
  js_distance: number | null;
  ks_pvalue: number | null;
  chi2_pvalue: number | null;
  status: string;
}

export interface FeatureDriftSeries {
  feature: string;
  kind: string;
  points: DriftPoint[];
}

export interface DriftRunSummary {
  run_id: string;
  run_at: string;
  model_version: number;
  window_start: string;
  window_end: string;
  n_current: number;
  drifted: string[];
  insufficient: number;
}

export interface DriftAlert {
  run_id: string;
  run_at: string;
  model_version: number;
  feature: string;
  kind: string;
  reasons: string[];
  psi: number | null;
  js_distance: number | null;
}

export interface DriftHistory {
  runs: DriftRunSummary[];
  features: FeatureDriftSeries[];
  alerts: DriftAlert[];
}

export interface HistogramBucket {
  le: number | null; // null: +Inf
  count: number;
}

export interface RouteStats {
  route: string;
  requests: Record<string, number>;
  latency_count: number;
  latency_sum: number;
  buckets: HistogramBucket[];
}

export interface LiveStats {
  replica: string;
  started_at: string;
  now: string;
  model_version: number;
  routes: RouteStats[];
  cache: Record<string, number>;
  predictions: Record<string, number>;
  rate_limited: number;
}

export interface TokenAnswer {
  access_token: string;
  token_type: string;
  expires_in: number;
  scope: string;
}
