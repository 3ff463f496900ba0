"""Batch scoring of Parquet and CSV tables: our ONNX runtime in-process (``local.py``) or as
MLflow's Spark UDF (``spark.py``); ``mlflow-deploy batch`` (``cli.py``) drives both."""
