"""Default drift settings: plain constants, importable by the CLI without loading mlflow."""

from __future__ import annotations

#: Pinned because Evidently's automatic choice switches at 1,000 reference rows (K-S / chi-squared
#: p-values below, distances above): the same data could drift on 8 or 11 columns between runs.
DEFAULT_NUM_METHOD = "wasserstein"
DEFAULT_CAT_METHOD = "jensenshannon"
DEFAULT_THRESHOLD = 0.1
DEFAULT_DRIFT_SHARE = 0.5
#: Rows compared at most, per side: twice the reference sample stored at promotion (10,000).
DEFAULT_SAMPLE_SIZE = 20_000
